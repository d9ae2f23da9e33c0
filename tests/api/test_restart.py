"""Restarts: what was committed survives, and a turn cut off by a stop or a crash frees its lease."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2

from tests.api.conftest import API, create_session, detail, open_turn, send, session_row, wait_until
from tests.conftest import ServerFactory, Tenants, base_env, client
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.scripted_upstream import ScriptedUpstream, Stall
from tests.support.sse_client import iter_frames

ROOT = Path(__file__).resolve().parents[2]


def test_everything_committed_survives_a_restart(make_server: ServerFactory, tenants: Tenants) -> None:
    first = ScriptedProvider()
    first.enqueue(Reply(tokens=["Four."], reasoning=["2+2"]), Reply(tokens=["Paris."]))
    server = make_server(first)
    with client(server, tenants.a1) as c:
        kept = create_session(c, pageContext={"page": "devices"})
        send(c, kept, "2+2?")
        send(c, kept, "Capital of France?")
        closed = create_session(c, title="to close")
        c.patch(f"{API}/sessions/{closed}", json={"title": "renamed"})
        c.delete(f"{API}/sessions/{closed}")
        before = {sid: detail(c, sid) for sid in (kept, closed)}
        listing = c.get(f"{API}/sessions").json()
        usage = c.get(f"{API}/usage").json()
    server.stop()

    second = ScriptedProvider()
    server = make_server(second)
    with client(server, tenants.a1) as c:
        assert {sid: detail(c, sid) for sid in (kept, closed)} == before
        assert c.get(f"{API}/sessions").json() == listing
        assert c.get(f"{API}/usage").json() == usage
        follow = send(c, kept, "And Germany?")
    assert follow.types[0] == "message_start"
    assert follow.types[-2:] == ["message_end", "done"]
    assert follow.frames[0].id == "3-1"  # event ids go on across restarts
    assert [(m.role, m.plain_text) for m in second.calls[0][1:]] == [
        ("user", "2+2?"),
        ("assistant", "Four."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And Germany?"),
    ]
    assert second.calls[0][0].plain_text.endswith("\npage: devices")
    assert before[kept]["messages"][1]["reasoning"] == "2+2"


def test_stopping_the_server_mid_turn_releases_the_lease(make_server: ServerFactory, tenants: Tenants) -> None:
    hanging = ScriptedProvider(Reply(first_delay=3600))
    server = make_server(hanging)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with open_turn(c, sid, "never answered") as turn:
            turn.until(lambda f: f.event == "message_start")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    assert hanging.closed == 1
    row = session_row(tenants, sid)
    assert row.lease_token is None
    assert row.turn_count == 1

    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        again = send(c, sid, "second try")
        assert again.types[-2:] == ["message_end", "done"]
        messages = detail(c, sid)["messages"]
    # The reply cut by the restart is stored empty, so the conversation still alternates.
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "never answered"),
        ("assistant", ""),
        ("user", "second try"),
        ("assistant", "Hello there!"),
    ]
    assert messages[1]["finishReason"] == "interrupted"


def test_an_open_stream_is_told_when_the_server_stops(make_server: ServerFactory, tenants: Tenants) -> None:
    """A graceful stop ends running turns with `error{server_restarting}` + `done`, promptly."""
    server = make_server(ScriptedProvider(Reply(first_delay=3600)))
    with client(server, tenants.a1, timeout=2.5) as c:
        sid = create_session(c)
        with open_turn(c, sid, "never answered") as turn:
            turn.until(lambda f: f.event == "message_start")
            started = time.monotonic()
            server.server.should_exit = True  # what SIGTERM does
            with contextlib.suppress(httpx2.HTTPError):  # no frame for 2.5 s, or the connection was cut
                turn.rest()
            elapsed = time.monotonic() - started
    server.stop()
    assert turn.types[-2:] == ["error", "done"], turn.types
    assert turn.frames[-2].data["code"] == "server_restarting"
    assert elapsed < 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_CRASHING_SERVER = textwrap.dedent(
    """
    import sys
    from datetime import timedelta

    import uvicorn

    from parley.app import create_app
    from parley.config import load_settings

    app = create_app(load_settings(), lease_ttl=timedelta(seconds=1))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def _wait_for_http(url: str, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "server exited"
        try:
            if httpx2.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up")


def test_a_crashed_server_does_not_hold_the_lease_for_long(
    make_server: ServerFactory, tenants: Tenants, data_dir: Path
) -> None:
    """Killed mid-turn (SIGKILL: no cleanup at all), the lease simply expires."""
    with ScriptedUpstream(default=Stall()) as upstream:
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_"))},
            **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
            "PYTHONPATH": str(ROOT / "src"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _CRASHING_SERVER, str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for_http(url, proc)
            with client_at(url, tenants.a1) as c:
                sid = create_session(c)
                with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "hang"}) as r:
                    assert r.status_code == 200
                    frames = iter_frames(r)
                    assert next(frames).event == "title_updated"
                    assert next(frames).event == "message_start"
                    assert wait_until(lambda: len(upstream.requests) == 1, timeout=5)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if proc.stderr:
                proc.stderr.close()
    assert session_row(tenants, sid).lease_token is not None  # nobody released it

    server = make_server(ScriptedProvider())
    started = time.monotonic()
    with client(server, tenants.a1) as c:

        def admitted() -> bool:
            with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "after the crash"}) as r:
                if r.status_code == 409:
                    r.read()
                    return False
                assert r.status_code == 200, r.read()
                return list(iter_frames(r))[-1].event == "done"

        assert wait_until(admitted, timeout=4, interval=0.1)
    assert time.monotonic() - started < 3


def client_at(url: str, token: str) -> httpx2.Client:
    return httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_event_ids_and_lease_survive_a_short_lease_ttl(make_server: ServerFactory, tenants: Tenants) -> None:
    """A turn longer than the lease TTL keeps its lease (renewed), so no second turn slips in."""
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=[f"r{i} " for i in range(20)], delay=0.04))  # 0.8 s, TTL 0.3 s
    server = make_server(provider, app_kwargs={"lease_ttl": timedelta(seconds=0.3)})
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c)
        with open_turn(c, sid, "long") as turn:
            turn.deltas(16)  # 0.6 s in: past two TTLs
            r = other.post(f"{API}/sessions/{sid}/messages", json={"content": "sneak in"})
            assert r.status_code == 409
            assert r.json()["code"] == "turn_in_progress"
            turn.rest()
    assert turn.types[-2:] == ["message_end", "done"]
