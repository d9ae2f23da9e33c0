"""The audit trail in the store: tenant-isolated, append-only for the application, pruned by age.

On both databases through the repositories; on PostgreSQL also with raw SQL as the application
role, which may insert and read its organizations' events and nothing else: no UPDATE, no
DELETE, no TRUNCATE, and the owner's pruning function as the one way old rows go.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.tenancy import Tenant
from tests.conftest import DatabaseUrls, Tenants, database_of_kind

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    return database_of_kind(request, request.param, data_dir)


def _event(action: str, org_id: str | None, *, at: datetime = NOW, session_id: str | None = None) -> dict[str, object]:
    return {
        "created_at": at,
        "action": action,
        "org_id": org_id,
        "actor_user_id": None,
        "session_id": session_id,
        "request_id": "req-1",
        "client_ip": "127.0.0.1",
        "user_agent": "pytest",
        "detail": {"n": 1},
    }


async def _append(db: Database, tenant: Tenant, *events: dict[str, object]) -> None:
    async with db.unit(tenant) as tx:
        await repo.insert_audit_events(tx, list(events))


async def _actions(db: Database, tenant: Tenant, *, action: str | None = None) -> list[str]:
    async with db.unit(tenant, readonly=True) as tx:
        rows = await repo.security_events(tx, tenant, since=NOW - timedelta(days=3650), action=action, limit=100)
    return [row["action"] for row in rows]


async def test_events_read_back_as_written_newest_first(db: Database, tenants: Tenants) -> None:
    org_a = Tenant.for_org(tenants.org_a)
    await _append(
        db,
        org_a,
        _event("ai.security.rate_limited", tenants.org_a, at=NOW - timedelta(minutes=2)),
        _event("ai.tool.demo__clock", tenants.org_a, at=NOW - timedelta(minutes=1)),
        _event("ai.session.create", tenants.org_a),
    )
    async with db.unit(org_a, readonly=True) as tx:
        rows = await repo.security_events(tx, org_a, since=NOW - timedelta(hours=1), action=None, limit=10)
    # Security and tool events by default; the others by their action.
    assert [row["action"] for row in rows] == ["ai.tool.demo__clock", "ai.security.rate_limited"]
    assert rows[0]["detail"] == {"n": 1}
    assert rows[0]["created_at"] == NOW - timedelta(minutes=1)
    assert (rows[0]["request_id"], rows[0]["client_ip"], rows[0]["user_agent"]) == ("req-1", "127.0.0.1", "pytest")
    assert rows[1]["id"] < rows[0]["id"]  # a sequence: the order of writing
    assert await _actions(db, org_a, action="ai.session.create") == ["ai.session.create"]


async def test_an_organization_sees_only_its_own_events(db: Database, tenants: Tenants) -> None:
    await _append(db, Tenant.for_org(tenants.org_a), _event("ai.security.budget_refused", tenants.org_a))
    await _append(db, Tenant.for_org(tenants.org_b), _event("ai.security.rate_limited", tenants.org_b))
    await _append(db, Tenant.system(), _event("ai.security.revoked_token_used", None))
    assert await _actions(db, Tenant.for_org(tenants.org_a)) == ["ai.security.budget_refused"]
    assert await _actions(db, Tenant.for_org(tenants.org_b)) == ["ai.security.rate_limited"]
    assert sorted(await _actions(db, Tenant.system())) == [
        "ai.security.budget_refused",
        "ai.security.rate_limited",
        "ai.security.revoked_token_used",
    ]


async def test_pruning_deletes_only_what_is_older_than_the_retention(db: Database, tenants: Tenants) -> None:
    old = NOW - timedelta(days=400)
    await _append(
        db,
        Tenant.for_org(tenants.org_a),
        _event("ai.security.rate_limited", tenants.org_a, at=old),
        _event("ai.security.budget_refused", tenants.org_a, at=NOW - timedelta(days=300)),
    )
    await _append(db, Tenant.for_org(tenants.org_b), _event("ai.security.rate_limited", tenants.org_b, at=old))
    # Pruning is for every organization, whoever runs it (the upkeep does, with system scope).
    async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
        assert await repo.prune_audit_events(tx, keep_days=365, now=NOW) == 2
    assert await _actions(db, Tenant.system()) == ["ai.security.budget_refused"]
    async with db.unit(Tenant.system()) as tx:
        with pytest.raises(ValueError, match="at least one day"):
            await repo.prune_audit_events(tx, keep_days=0, now=NOW)


# --- PostgreSQL: the application role, in raw SQL ----------------------------------------------------


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def app_conn(pg_database: DatabaseUrls) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_dsn(pg_database.app))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pg_tenants(pg_database: DatabaseUrls) -> Tenants:
    from tests.conftest import _seed

    return await _seed(pg_database.admin, pg_database.app)


async def _as(conn: asyncpg.Connection, scope: str, orgs: str) -> None:
    await conn.execute(
        "SELECT set_config('parley.scope', $1, true), set_config('parley.org_ids', $2, true)", scope, orgs
    )


INSERT = "INSERT INTO ai_audit_events (created_at, action, org_id) VALUES ($1, $2, $3)"


async def test_the_app_role_may_append_and_read_but_never_change_or_delete(
    app_conn: asyncpg.Connection, pg_tenants: Tenants
) -> None:
    org_a = pg_tenants.org_a
    async with app_conn.transaction():
        await _as(app_conn, "organization", org_a)
        await app_conn.execute(INSERT, NOW, "ai.security.rate_limited", org_a)
        assert await app_conn.fetchval("SELECT count(*) FROM ai_audit_events") == 1
    for statement in (
        "UPDATE ai_audit_events SET action = 'ai.nothing'",
        "DELETE FROM ai_audit_events",
        "TRUNCATE ai_audit_events",
    ):
        async with app_conn.transaction():
            await _as(app_conn, "system", "*")  # not even with system scope
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await app_conn.execute(statement)
    async with app_conn.transaction():
        await _as(app_conn, "system", "*")
        assert await app_conn.fetchval("SELECT action FROM ai_audit_events") == "ai.security.rate_limited"


async def test_the_app_role_reads_and_writes_only_its_organizations_events(
    app_conn: asyncpg.Connection, pg_tenants: Tenants
) -> None:
    org_a, org_b = pg_tenants.org_a, pg_tenants.org_b
    async with app_conn.transaction():
        await _as(app_conn, "system", "*")
        await app_conn.execute(INSERT, NOW, "ai.security.rate_limited", org_b)
        await app_conn.execute(INSERT, NOW, "ai.security.revoked_token_used", None)
    async with app_conn.transaction():
        await _as(app_conn, "organization", org_a)
        assert await app_conn.fetchval("SELECT count(*) FROM ai_audit_events") == 0  # B's and system's: hidden
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute(INSERT, NOW, "ai.session.create", org_b)
    async with app_conn.transaction():
        await _as(app_conn, "organization", org_a)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute(INSERT, NOW, "ai.session.create", None)  # a system event from a tenant
    async with app_conn.transaction():
        await _as(app_conn, "", "")  # no tenant settings: nothing
        assert await app_conn.fetchval("SELECT count(*) FROM ai_audit_events") == 0


async def test_the_pruning_function_deletes_only_old_rows_and_leaves_the_callers_scope(
    app_conn: asyncpg.Connection, pg_tenants: Tenants
) -> None:
    org_a, org_b = pg_tenants.org_a, pg_tenants.org_b
    async with app_conn.transaction():
        await _as(app_conn, "system", "*")
        await app_conn.execute(INSERT, NOW - timedelta(days=40), "ai.security.rate_limited", org_b)
        await app_conn.execute(INSERT, NOW - timedelta(days=10), "ai.security.rate_limited", org_a)
    async with app_conn.transaction():
        await _as(app_conn, "organization", org_a)
        assert await app_conn.fetchval("SELECT parley_prune_audit_events(30)") == 1
        assert await app_conn.fetchval("SELECT current_setting('parley.scope', true)") == "organization"
    async with app_conn.transaction():
        await _as(app_conn, "system", "*")
        assert await app_conn.fetchval("SELECT count(*) FROM ai_audit_events") == 1
    with pytest.raises(asyncpg.RaiseError, match="at least 1"):
        await app_conn.fetchval("SELECT parley_prune_audit_events(0)")


async def test_a_message_and_its_event_are_written_together_and_only_together(db: Database, tenants: Tenants) -> None:
    """Admission writes the user message and its `ai.message.send` event with one call (one
    statement on PostgreSQL): both land, or, when the event is refused, neither."""
    org_a = Tenant.for_org(tenants.org_a)
    session_id = str(uuid.uuid4())
    async with db.unit(org_a) as tx:
        await repo.insert_session(
            tx,
            {
                "id": session_id,
                "org_id": tenants.org_a,
                "status": "active",
                "type": "general",
                "model": "m",
                "last_activity_at": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )
    message = {"session_id": session_id, "position": 1, "role": "user", "content": "hi", "created_at": NOW}
    async with db.unit(org_a) as tx:
        await repo.insert_message(
            tx,
            **message,
            parts=[{"type": "text", "text": "hi"}],
            audit=_event("ai.message.send", tenants.org_a, session_id=session_id),
        )
    assert await _actions(db, org_a, action="ai.message.send") == ["ai.message.send"]
    if db.is_postgres:  # an event for another organization is refused, and the message with it
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with db.unit(org_a) as tx:
                await repo.insert_message(
                    tx, **(message | {"position": 3}), parts=[], audit=_event("ai.message.send", tenants.org_b)
                )
    async with db.unit(org_a, readonly=True) as tx:
        assert [row[:2] for row in await repo.history_rows(tx, session_id)] == [("user", "hi")]
    assert await _actions(db, org_a, action="ai.message.send") == ["ai.message.send"]
