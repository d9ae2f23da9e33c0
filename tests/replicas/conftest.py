"""Several parley processes on one database, with and without Redis between them.

Most tests run two apps, A and B, as two machines would (each its own node name, pool, relay and
upkeep), on real uvicorn servers in this process, against a scripted model server that records
every request and notices every disconnect. The tests that crash a process run `parley serve`
as a child process. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DatabaseUrls, ServerFactory, Tenants, database_of_kind
from tests.support.live_server import LiveServer
from tests.support.parley_process import ParleyProcess
from tests.support.redis import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    return database_of_kind(request, request.param, data_dir)


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as server:
        yield server


def long_reply(n: int = 150, delay: float = 0.02) -> TokenStream:
    """A reply that streams for about `n * delay` seconds."""
    return TokenStream(n=n, text="w{i} ", delay=delay)


@dataclass
class Pair:
    a: LiveServer
    b: LiveServer
    tenants: Tenants


@pytest.fixture
def relayed(
    make_server: ServerFactory, tenants: Tenants, upstream: ScriptedUpstream, redis_server: RedisServer
) -> Pair:
    """Processes A and B on one database, with Redis between them."""
    env = {"MCP_LLM_BASE_URL": upstream.base_url, "PARLEY_REDIS_URL": redis_server.url}
    a = make_server(**env, PARLEY_NODE_NAME="machine-a")
    b = make_server(**env, PARLEY_NODE_NAME="machine-b")
    return Pair(a, b, tenants)


@pytest.fixture
def unrelayed(make_server: ServerFactory, tenants: Tenants, upstream: ScriptedUpstream) -> Pair:
    """Processes A and B on one database, without Redis."""
    a = make_server(MCP_LLM_BASE_URL=upstream.base_url, PARLEY_NODE_NAME="machine-a")
    b = make_server(MCP_LLM_BASE_URL=upstream.base_url, PARLEY_NODE_NAME="machine-b")
    return Pair(a, b, tenants)


@pytest.fixture
def processes() -> Iterator[list[ParleyProcess]]:
    """parley processes a test starts (append them); stopped after it."""
    started: list[ParleyProcess] = []
    yield started
    for process in started:
        process.stop()
