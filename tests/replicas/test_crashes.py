"""A parley process killed mid-turn (SIGKILL: no shutdown, no cleanup): what is kept, who takes over.

The process is `parley serve` as a child process; the model server is scripted and streams a long
reply, so the kill lands in the middle of it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx2

from parley.local.model_server import free_port
from tests.api.conftest import API, assert_error, create_session, detail, open_events
from tests.conftest import Tenants, base_env, client
from tests.replicas.conftest import long_reply
from tests.support.live_server import LiveServer
from tests.support.parley_process import ParleyProcess
from tests.support.redis import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream
from tests.support.sse_client import FrameReader

ROOT = Path(__file__).resolve().parents[2]


def _process(tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path, name: str, **env: str) -> ParleyProcess:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_", "DATABASE_"))},
        **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
        "PYTHONPATH": str(ROOT / "src"),
        "PARLEY_NODE_NAME": name,
        **env,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    return ParleyProcess(environment, free_port(), data_dir / f"{name}.log")


def _stream_then_kill(process: ParleyProcess, tenants: Tenants, seconds: float) -> tuple[str, str]:
    """Send a message, read its reply for `seconds`, kill the process: (session id, text read)."""
    with client_at(process.url, tenants.a1) as c:
        sid = create_session(c)
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "a long story"}) as r:
            assert r.status_code == 200
            reader = FrameReader(r)
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                assert reader.next() is not None
            process.kill()
            text = reader.text
    return sid, text


def client_at(url: str, token: str) -> httpx2.Client:
    return httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _admitted(c: httpx2.Client, sid: str) -> bool:
    with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "are you back?"}) as r:
        if r.status_code == 409:
            r.read()
            return False
        assert r.status_code == 200, r.read()
        return FrameReader(r).rest()[-1].event == "done"


def _wait_admitted(c: httpx2.Client, sid: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if _admitted(c, sid):
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the session took no message within {within} s")


def test_a_restarted_process_takes_a_message_at_once_and_the_checkpointed_reply_is_kept(
    tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path, processes: list[ParleyProcess]
) -> None:
    upstream.enqueue(long_reply(400, 0.02))  # 8 s
    upstream.set_default(TokenStream(n=3))
    process = _process(tenants, upstream, data_dir, "machine-a")
    processes.append(process.start())
    sid, streamed = _stream_then_kill(process, tenants, 3.0)
    restarted = time.monotonic()
    process.start()
    with client_at(process.url, tenants.a1) as c:
        _wait_admitted(c, sid, within=5)
        taken = time.monotonic() - restarted
        messages = detail(c, sid)["messages"]
    assert taken < 5, f"the restarted process took {taken:.1f} s to accept a message"
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    kept = messages[1]
    assert kept["finishReason"] == "interrupted"
    assert kept["id"] == messages[1]["id"]
    # At most about a second of what was streamed is lost: the reply was checkpointed as it grew.
    assert streamed.startswith(kept["content"])
    assert len(kept["content"]) >= len(streamed) * 0.5, (len(kept["content"]), len(streamed))
    assert len(kept["content"]) > 0
    # The next turn's model request holds the kept reply: the history alternates.
    sent = upstream.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == kept["content"]


def test_stop_ends_the_turn_of_a_crashed_process(
    tenants: Tenants,
    upstream: ScriptedUpstream,
    data_dir: Path,
    processes: list[ParleyProcess],
    redis_server: RedisServer,
    make_server: object,
) -> None:
    """While the dead process's lease still holds, Stop (answered by another machine) ends the
    turn, and the session takes a message at once: never 409 on both."""
    upstream.enqueue(long_reply(400, 0.02))
    upstream.set_default(TokenStream(n=3))
    a = _process(tenants, upstream, data_dir, "machine-a", PARLEY_REDIS_URL=redis_server.url)
    processes.append(a.start())
    b: LiveServer = make_server(  # type: ignore[operator]
        MCP_LLM_BASE_URL=upstream.base_url, PARLEY_REDIS_URL=redis_server.url, PARLEY_NODE_NAME="machine-b"
    )
    sid, _ = _stream_then_kill(a, tenants, 1.5)
    time.sleep(7)  # the dead process's liveness key lapses (its lease, 20 s, still holds)
    with client(b, tenants.a1) as on_b:
        assert on_b.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
        assert _admitted(on_b, sid)
        messages = detail(on_b, sid)["messages"]
    assert messages[1]["finishReason"] == "interrupted"


def test_a_follower_is_told_when_the_process_streaming_dies_and_another_takes_over(
    tenants: Tenants,
    upstream: ScriptedUpstream,
    data_dir: Path,
    processes: list[ParleyProcess],
    redis_server: RedisServer,
    make_server: object,
) -> None:
    upstream.enqueue(long_reply(600, 0.02))
    upstream.set_default(TokenStream(n=3))
    a = _process(tenants, upstream, data_dir, "machine-a", PARLEY_REDIS_URL=redis_server.url)
    processes.append(a.start())
    b: LiveServer = make_server(  # type: ignore[operator]
        MCP_LLM_BASE_URL=upstream.base_url, PARLEY_REDIS_URL=redis_server.url, PARLEY_NODE_NAME="machine-b"
    )
    with client_at(a.url, tenants.a1) as on_a, client(b, tenants.a1) as on_b:
        sid = create_session(on_a)
        with on_a.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "long"}) as r:
            producer = FrameReader(r)
            producer.deltas(5)
            with open_events(on_b, sid) as follower:
                follower.deltas(10)
                a.kill()
                killed = time.monotonic()
                follower.rest()
                told = time.monotonic() - killed
        assert follower.types[-2:] == ["error", "done"]
        assert follower.frames[-2].data["code"] == "turn_lost"
        assert told < 15, told
        # B ends the orphaned turn once A stops announcing itself, long before A's lease would lapse.
        _wait_admitted(on_b, sid, within=15)
        messages = detail(on_b, sid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["finishReason"] == "interrupted"
    assert follower.text.startswith(messages[1]["content"])


def test_without_redis_another_machine_takes_over_once_the_lease_expires(
    tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path, processes: list[ParleyProcess], make_server: object
) -> None:
    upstream.enqueue(long_reply(400, 0.02))
    upstream.set_default(TokenStream(n=3))
    a = _process(tenants, upstream, data_dir, "machine-a", PARLEY_TURN_LEASE_SECONDS="3")
    processes.append(a.start())
    b: LiveServer = make_server(  # type: ignore[operator]
        MCP_LLM_BASE_URL=upstream.base_url, PARLEY_NODE_NAME="machine-b", PARLEY_TURN_LEASE_SECONDS="3"
    )
    sid, _ = _stream_then_kill(a, tenants, 1.5)
    with client(b, tenants.a1) as on_b:
        assert_error(on_b.post(f"{API}/sessions/{sid}/messages", json={"content": "x"}), 409, "turn_in_progress")
        waited = _wait_admitted(on_b, sid, within=10)
    assert waited < 6
