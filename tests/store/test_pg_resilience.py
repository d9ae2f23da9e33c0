"""PostgreSQL going away and coming back: parley answers 503 meanwhile and recovers by itself.

These tests stop and start their own cluster, so they never disturb the shared one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import func, literal, select

from parley.errors import ServiceUnavailableError
from parley.store.db import Database
from parley.store.tenancy import Tenant
from tests.conftest import (
    APP_PASSWORD,
    APP_ROLE,
    DatabaseUrls,
    ServerFactory,
    Tenants,
    _seed,
    base_env,
    client,
    migrated_cluster,
)
from tests.support.postgres import PostgresCluster
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.sse_client import FrameReader


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    yield from migrated_cluster("parley")


@pytest.fixture
def pg_tenants(own_cluster: PostgresCluster) -> Tenants:
    return asyncio.run(_seed(own_cluster.url(database="parley"), own_cluster.url(APP_ROLE, "parley", APP_PASSWORD)))


def test_requests_get_503_while_postgres_is_down_and_recover(
    own_cluster: PostgresCluster, pg_tenants: Tenants, make_server: ServerFactory
) -> None:
    server = make_server(ScriptedProvider(), DATABASE_URL=pg_tenants.database_url, PARLEY_DB_POOL_TIMEOUT_SECONDS="2")
    with client(server, pg_tenants.a1) as c:
        assert c.get("/api/v1/ai/sessions").status_code == 200
        own_cluster.stop()
        try:
            down = c.get("/api/v1/ai/sessions")
            assert down.status_code == 503, down.text
            assert down.json()["code"] == "service_unavailable"
        finally:
            own_cluster.resume()
        own_cluster.wait_ready()
        assert c.get("/api/v1/ai/sessions").status_code == 200  # the same parley process recovered


def test_a_turn_survives_a_postgres_restart_mid_stream(
    own_cluster: PostgresCluster, pg_tenants: Tenants, make_server: ServerFactory
) -> None:
    provider = ScriptedProvider(Reply(tokens=[f"t{i} " for i in range(20)], delay=0.1))
    server = make_server(provider, DATABASE_URL=pg_tenants.database_url)
    with client(server, pg_tenants.a1) as c:
        sid = c.post("/api/v1/ai/sessions", json={}).json()["id"]
        with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "go"}) as r:
            reader = FrameReader(r)
            assert [f.event for f in reader.take(3)] == ["title_updated", "message_start", "content_delta"]
            own_cluster.stop()
            own_cluster.resume()
            rest = [f.event for f in reader.rest()]
        assert rest[-2:] == ["message_end", "done"], rest
        detail = c.get(f"/api/v1/ai/sessions/{sid}").json()
        assert detail["messages"][-1]["content"] == "".join(f"t{i} " for i in range(20))


async def test_an_exhausted_pool_answers_503_after_a_bounded_wait(
    own_cluster: PostgresCluster,
) -> None:
    db = Database(own_cluster.url(APP_ROLE, "parley", APP_PASSWORD), pool_size=1, pool_timeout=0.5)
    try:
        async with db.unit(Tenant.system()):
            started = time.monotonic()
            with pytest.raises(ServiceUnavailableError, match="busy"):
                async with db.unit(Tenant.system()):
                    pass
            assert 0.4 < time.monotonic() - started < 3
    finally:
        await db.dispose()


async def test_admissions_leave_connections_for_the_work_that_finishes_turns(
    own_cluster: PostgresCluster,
) -> None:
    """A burst of admissions holds at most `admission_slots` connections: storing a turn still gets
    one at once, and the admission past the slots waits the pool's timeout, then 503."""
    db = Database(own_cluster.url(APP_ROLE, "parley", APP_PASSWORD), pool_size=5, pool_timeout=0.5)
    held = asyncio.Event()
    release = asyncio.Event()
    entered = 0

    async def admission() -> None:
        nonlocal entered
        async with db.unit(Tenant.system(), admission=True):
            entered += 1
            if entered == db.admission_slots:
                held.set()
            await release.wait()

    assert db.admission_slots == 4
    burst = [asyncio.create_task(admission()) for _ in range(db.admission_slots)]
    try:
        await asyncio.wait_for(held.wait(), 10)
        started = time.monotonic()
        async with db.unit(Tenant.system()) as tx:  # a turn being stored: not kept waiting
            assert await tx.value(select(literal(1))) == 1
        assert time.monotonic() - started < 0.4
        with pytest.raises(ServiceUnavailableError, match="busy"):
            async with db.unit(Tenant.system(), admission=True):
                pass
        assert 0.4 < time.monotonic() - started < 3
    finally:
        release.set()
        await asyncio.gather(*burst)
        await db.dispose()


def test_serve_waits_for_postgres_to_come_up(own_cluster: PostgresCluster, pg_tenants: Tenants, tmp_path: Path) -> None:
    own_cluster.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | base_env(tmp_path, DATABASE_URL=pg_tenants.database_url)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "parley", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 20
        while b"database not reachable" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        own_cluster.resume()
        deadline = time.monotonic() + 40
        while True:
            try:
                r = httpx2.get(
                    f"http://127.0.0.1:{port}/api/v1/ai/sessions",
                    headers={"Authorization": f"Bearer {pg_tenants.a1}"},
                    timeout=5,
                )
                if r.status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def test_a_statement_past_the_timeout_answers_503_and_frees_its_connection(
    pg_database: DatabaseUrls,
) -> None:
    db = Database(pg_database.app, pool_size=1, statement_timeout=0.3)
    try:
        async with db.unit(Tenant.system(), readonly=True) as tx:
            assert await tx.value(select(func.current_setting("statement_timeout"))) == "300ms"
            assert await tx.value(select(func.current_setting("idle_in_transaction_session_timeout"))) == "300ms"
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match="took too long"):
            async with db.unit(Tenant.system(), readonly=True) as tx:
                await tx.value(select(func.pg_sleep(5)))
        assert time.monotonic() - started < 2
        async with db.unit(Tenant.system(), readonly=True) as tx:  # the one pooled connection is usable
            assert await tx.value(select(literal(1))) == 1
    finally:
        await db.dispose()


async def test_the_tenant_settings_are_set_as_given_and_last_only_for_their_unit(pg_database: DatabaseUrls) -> None:
    # Quotes, a backslash and a semicolon in a user id (a token's claim) are data, never SQL.
    user_id = "o'brien\\'; RESET ALL; --"
    tenant = Tenant(scope="partner", org_ids=frozenset({"org-1", "org-2"}), user_id=user_id)
    db = Database(pg_database.app, pool_size=1)
    settings = select(
        func.current_setting("parley.scope"),
        func.current_setting("parley.org_ids"),
        func.current_setting("parley.user_id"),
    )
    try:
        async with db.unit(tenant, readonly=True) as tx:
            assert await tx.row(settings) == ("partner", tenant.org_list, user_id)
        async with db.unit(Tenant.system(), readonly=True) as tx:  # the same pooled connection
            assert await tx.row(settings) == ("system", Tenant.system().org_list, "")
        async with db.unit(tenant) as tx:
            assert await tx.row(settings) == ("partner", tenant.org_list, user_id)
    finally:
        await db.dispose()
