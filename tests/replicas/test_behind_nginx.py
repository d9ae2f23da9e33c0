"""A deployment as `docs/deploy.md` describes it: nginx round-robin over two parley processes,
PostgreSQL and Redis. A chat through it: send, re-attach mid-turn, Stop, close. And one process
with several workers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from parley.local.model_server import free_port
from tests.api.conftest import API, create_session, detail
from tests.conftest import DatabaseUrls, Tenants, base_env, database_of_kind
from tests.replicas.conftest import long_reply
from tests.support.nginx import NginxBalancer
from tests.support.nginx import missing as nginx_missing
from tests.support.parley_process import ParleyProcess
from tests.support.redis import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream
from tests.support.sse_client import FrameReader

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["postgres"])
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    return database_of_kind(request, request.param, data_dir)


def _environment(tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path, **env: str) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_", "DATABASE_"))},
        **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
        "PYTHONPATH": str(ROOT / "src"),
        **env,
    }


@pytest.fixture
def deployment(
    tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path, redis_server: RedisServer
) -> Iterator[str]:
    """nginx in front of two parley processes (machines a and b); yields nginx's URL."""
    reason = nginx_missing()
    if reason:
        pytest.fail(reason)
    processes = [
        ParleyProcess(
            _environment(tenants, upstream, data_dir, PARLEY_REDIS_URL=redis_server.url, PARLEY_NODE_NAME=name),
            free_port(),
            data_dir / f"{name}.log",
        ).start()
        for name in ("machine-a", "machine-b")
    ]
    balancer = NginxBalancer([f"127.0.0.1:{p.port}" for p in processes])
    balancer.start()
    try:
        yield balancer.url
    finally:
        balancer.destroy()
        for process in processes:
            process.stop()


def _client(url: str, token: str) -> httpx2.Client:
    return httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=20)


def test_a_chat_through_nginx_over_two_processes(deployment: str, tenants: Tenants, upstream: ScriptedUpstream) -> None:
    upstream.set_default(TokenStream(n=5))
    with _client(deployment, tenants.a1) as c, _client(deployment, tenants.a1) as other:
        sid = create_session(c)
        # Send: requests alternate between the processes; every turn ends with done.
        for i in range(3):
            with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": f"hello {i}"}) as r:
                assert r.status_code == 200
                assert FrameReader(r).rest()[-1].event == "done"
        # Re-attach mid-turn, through nginx: whichever process answers, the rest of the turn, once.
        upstream.enqueue(long_reply(60, 0.03))
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "long"}) as r:
            turn = FrameReader(r)
            turn.deltas(5)
            seen = turn.frames[-1].id
            with other.stream("GET", f"{API}/sessions/{sid}/events", headers={"Last-Event-ID": seen}) as again:
                assert again.status_code == 200
                resumed = FrameReader(again)
                resumed.rest()
            turn.rest()
        ids = [f.id for f in turn.frames]
        assert [f.id for f in resumed.frames] == ids[ids.index(seen) + 1 :]
        assert resumed.frames[-1].event == "done"
        # Stop, through nginx: the model server is told within a second.
        upstream.enqueue(long_reply(300, 0.02))
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "longer"}) as r:
            stopping = FrameReader(r)
            stopping.deltas(5)
            assert other.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            assert upstream.wait_closed(timeout=1.5)
            stopping.rest()
        assert stopping.frames[-1].event == "done"
        # Close, through nginx, mid-turn: the stream ends, the session is closed.
        upstream.enqueue(long_reply(300, 0.02))
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "and close"}) as r:
            closing = FrameReader(r)
            closing.deltas(5)
            assert other.delete(f"{API}/sessions/{sid}").status_code == 200
            assert upstream.wait_closed(timeout=1.5)
            closing.rest()
        body = detail(c, sid)
    assert body["session"]["status"] == "closed"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 6
    assert [m["finishReason"] for m in body["messages"][1::2]] == ["stop"] * 4 + ["interrupted"] * 2


def test_several_workers_serve_one_port_each_with_its_own_start_and_stop(
    tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path
) -> None:
    upstream.set_default(TokenStream(n=5))
    process = ParleyProcess(_environment(tenants, upstream, data_dir), free_port(), data_dir / "workers.log", workers=2)
    process.start()
    try:
        with _client(process.url, tenants.a1) as c:
            for i in range(6):
                sid = create_session(c)
                with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": str(i)}) as r:
                    assert r.status_code == 200
                    assert FrameReader(r).rest()[-1].event == "done"
        deadline = time.monotonic() + 10
        while process.log(400).count("parley 0.1.0 ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.stop()
    log = process.log(400)
    assert log.count("ready: provider=") == 2, log  # each worker started its own app
    assert log.count("Application shutdown complete") == 2, log  # and shut it down
