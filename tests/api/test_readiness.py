"""`/healthz` is liveness; `/readyz` is 200 only when the database answers at the schema this version
needs and the model server answered its last probe (at most one probe every 10 seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from parley.api.operations import Readiness
from parley.store.db import Database
from tests.conftest import APP_PASSWORD, APP_ROLE, DatabaseUrls, ServerFactory, Tenants, _seed, migrated_cluster
from tests.support.inspect_db import in_db
from tests.support.postgres import PostgresCluster
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_provider import ScriptedProvider
from tests.support.scripted_upstream import Reply, ScriptedUpstream


def readyz(url: str) -> httpx2.Response:
    return httpx2.get(f"{url}/readyz", timeout=20)


def test_ready_when_the_database_and_the_model_server_answer(make_server: ServerFactory) -> None:
    provider = ScriptedProvider()
    server = make_server(provider)
    r = readyz(server.url)
    assert (r.status_code, r.json()["status"]) == (200, "ready")
    readyz(server.url)
    readyz(server.url)
    assert provider.probes == 1  # the model server's answer is kept for 10 s
    assert httpx2.get(f"{server.url}/healthz").json()["status"] == "ok"


def test_not_ready_while_the_model_server_does_not_answer(make_server: ServerFactory) -> None:
    provider = ScriptedProvider()
    provider.unreachable = "the model server is unreachable (ClientConnectorError)"
    server = make_server(provider)
    r = readyz(server.url)
    assert r.status_code == 503
    assert r.json() == {
        "error": "Not ready: the model server is unreachable (ClientConnectorError).",
        "code": "not_ready",
        "reasons": ["the model server is unreachable (ClientConnectorError)"],
    }
    assert httpx2.get(f"{server.url}/healthz").status_code == 200  # alive all the same


def test_each_provider_probes_its_server(make_server: ServerFactory) -> None:
    with ScriptedUpstream() as openai, ScriptedAnthropic() as anthropic:
        up = make_server(None, MCP_LLM_BASE_URL=openai.base_url)
        assert readyz(up.url).status_code == 200
        claude = make_server(
            None, MCP_LLM_PROVIDER="anthropic", ANTHROPIC_BASE_URL=anthropic.base_url, ANTHROPIC_API_KEY="sk-ant-k"
        )
        assert readyz(claude.url).status_code == 200
        (probe,) = anthropic.requests
        assert (probe.method, probe.path, probe.headers["x-api-key"]) == ("GET", "/v1/models", "sk-ant-k")
        openai.models_reply = Reply(401, {"error": {"message": "bad key"}})
        refused = make_server(None, MCP_LLM_BASE_URL=openai.base_url)
        assert readyz(refused.url).json()["reasons"] == ["the model server refused parley's credentials (HTTP 401)"]
        anthropic.models_reply = Reply(529, {"type": "error"})
        failing = make_server(
            None, MCP_LLM_PROVIDER="anthropic", ANTHROPIC_BASE_URL=anthropic.base_url, ANTHROPIC_API_KEY="sk-ant-k"
        )
        assert readyz(failing.url).json()["reasons"] == ["the model server answered HTTP 529"]
        openai.models_reply = Reply(404, {"error": {"message": "no such route"}})
        no_list = make_server(None, MCP_LLM_BASE_URL=openai.base_url)
        assert readyz(no_list.url).status_code == 200  # it answered: up, without a model list
    down = make_server(None)  # base_env's model server: a port nobody listens on
    r = readyz(down.url)
    assert r.status_code == 503
    assert r.json()["reasons"][0].startswith("the model server is unreachable")


def test_not_ready_on_a_schema_this_version_does_not_know(
    make_server: ServerFactory, database: DatabaseUrls, tenants: Tenants
) -> None:
    server = make_server(ScriptedProvider())
    assert readyz(server.url).status_code == 200

    async def set_revision(s: AsyncSession, revision: str) -> None:
        await s.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})

    in_db(database.admin, lambda s: set_revision(s, "0008"))
    try:
        r = readyz(server.url)
        assert r.status_code == 503
        assert r.json()["reasons"] == ["the database schema is at revision 0008, this version needs 0009"]
    finally:
        in_db(database.admin, lambda s: set_revision(s, "0009"))
    assert readyz(server.url).status_code == 200


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    yield from migrated_cluster("parley")


def test_not_ready_while_the_database_is_down(own_cluster: PostgresCluster, make_server: ServerFactory) -> None:
    url = own_cluster.url(APP_ROLE, "parley", APP_PASSWORD)
    asyncio.run(_seed(own_cluster.url(database="parley"), url))
    server = make_server(ScriptedProvider(), DATABASE_URL=url, PARLEY_DB_POOL_TIMEOUT_SECONDS="2")
    assert readyz(server.url).status_code == 200
    own_cluster.stop()
    try:
        r = readyz(server.url)
        assert r.status_code == 503
        assert r.json()["reasons"] == ["the database is unavailable"]
        assert httpx2.get(f"{server.url}/healthz").status_code == 200
    finally:
        own_cluster.resume()
    own_cluster.wait_ready()
    assert readyz(server.url).status_code == 200


async def test_the_model_server_is_probed_again_once_the_last_answer_is_old(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}")
    await db.migrate()
    provider = ScriptedProvider()
    now = [100.0]
    readiness = Readiness(db, provider, probe_every=10, clock=lambda: now[0])
    try:
        assert await readiness.problems() == []
        provider.unreachable = "gone"
        now[0] += 9.9
        assert await asyncio.gather(readiness.problems(), readiness.problems()) == [[], []]
        assert provider.probes == 1
        now[0] += 0.1
        assert await asyncio.gather(readiness.problems(), readiness.problems()) == [["gone"], ["gone"]]
        assert provider.probes == 2  # two callers at once: one probe
    finally:
        await db.dispose()
