"""Row-level security, checked with raw SQL as the application role (not the owner, not superuser)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import APP_ROLE, DatabaseUrls

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TENANT_TABLES = (
    "ai_sessions",
    "ai_messages",
    "ai_cost_usage",
    "api_tokens",
    "ai_budgets",
    "ai_budget_reservations",
    "ai_tool_executions",
    "ai_action_plans",
    "organizations",
    "users",
    "ai_audit_events",
)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def seeded(pg_database: DatabaseUrls) -> dict[str, str]:
    """Orgs A and B, a session and a message in each, cost rows; written as the owner."""
    admin_url = pg_database.admin
    ids = {k: str(uuid.uuid4()) for k in ("org_a", "org_b", "user_a", "user_b", "sess_a", "sess_b", "msg_a", "msg_b")}
    conn = await asyncpg.connect(_dsn(admin_url))
    try:
        await conn.execute("SELECT set_config('parley.scope', 'system', false)")
        for org in ("org_a", "org_b"):
            await conn.execute("INSERT INTO organizations VALUES ($1, $2, NULL, $3)", ids[org], org, NOW)
        for user, org in (("user_a", "org_a"), ("user_b", "org_b")):
            await conn.execute("INSERT INTO users VALUES ($1, $2, $3, $3, $4)", ids[user], ids[org], f"{user}@x", NOW)
        for sess, org, user in (("sess_a", "org_a", "user_a"), ("sess_b", "org_b", "user_b")):
            await conn.execute(
                "INSERT INTO ai_sessions (id, org_id, user_id, status, type, model, total_input_tokens, "
                "total_output_tokens, total_cache_read_tokens, total_cache_write_tokens, total_cost_cents, "
                "turn_count, max_turns, last_activity_at, created_at, updated_at) "
                "VALUES ($1, $2, $3, 'active', 'general', 'm', 0, 0, 0, 0, 0, 0, 50, $4, $4, $4)",
                ids[sess],
                ids[org],
                ids[user],
                NOW,
            )
        for msg, sess in (("msg_a", "sess_a"), ("msg_b", "sess_b")):
            await conn.execute(
                "INSERT INTO ai_messages (id, session_id, role, content, usage_estimated, created_at) "
                "VALUES ($1, $2, 'user', 'secret', false, $3)",
                ids[msg],
                ids[sess],
                NOW,
            )
        for org in ("org_a", "org_b"):
            await conn.execute(
                "INSERT INTO ai_cost_usage VALUES ($1, $2, 'daily', '2026-01-01', 1, 1, 0, 0, 1.5, 0, 1, $3)",
                str(uuid.uuid4()),
                ids[org],
                NOW,
            )
    finally:
        await conn.close()
    return ids


@pytest.fixture
async def app_conn(pg_database: DatabaseUrls) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_dsn(pg_database.app))
    try:
        yield conn
    finally:
        await conn.close()


async def as_tenant(conn: asyncpg.Connection, scope: str, orgs: str, user_id: str = "") -> None:
    """The settings `Database.unit` sets for a tenant, transaction-local."""
    await conn.execute(
        "SELECT set_config('parley.scope', $1, true), set_config('parley.org_ids', $2, true), "
        "set_config('parley.user_id', $3, true)",
        scope,
        orgs,
        user_id,
    )


async def test_the_app_role_is_neither_owner_superuser_nor_bypassrls(app_conn: asyncpg.Connection) -> None:
    row = await app_conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
    assert await app_conn.fetchval("SELECT current_user") == APP_ROLE
    assert (row["rolsuper"], row["rolbypassrls"]) == (False, False)
    owned = await app_conn.fetchval("SELECT count(*) FROM pg_tables WHERE tableowner = current_user")
    assert owned == 0


async def test_every_tenant_table_has_forced_rls_and_a_policy(app_conn: asyncpg.Connection) -> None:
    rows = await app_conn.fetch(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
        "(SELECT count(*) FROM pg_policies p WHERE p.tablename = c.relname) AS policies "
        "FROM pg_class c WHERE c.relname = ANY($1::text[])",
        list(TENANT_TABLES),
    )
    assert {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"], r["policies"] > 0) for r in rows} == {
        t: (True, True, True) for t in TENANT_TABLES
    }


@pytest.mark.parametrize("table", ["ai_sessions", "ai_messages", "ai_cost_usage", "organizations", "users"])
async def test_no_tenant_settings_see_nothing(app_conn: asyncpg.Connection, seeded: dict[str, str], table: str) -> None:
    assert await app_conn.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_empty_settings_from_a_reused_connection_see_nothing(
    app_conn: asyncpg.Connection, seeded: dict[str, str]
) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        assert await app_conn.fetchval("SELECT count(*) FROM ai_sessions") == 1
    # The same physical connection, next transaction: the settings read '' now, not NULL.
    assert await app_conn.fetchval("SELECT current_setting('parley.scope', true)") == ""
    assert await app_conn.fetchval("SELECT count(*) FROM ai_sessions") == 0


async def test_org_a_reads_only_its_rows(app_conn: asyncpg.Connection, seeded: dict[str, str]) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        assert [r["id"] for r in await app_conn.fetch("SELECT id FROM ai_sessions")] == [seeded["sess_a"]]
        assert [r["id"] for r in await app_conn.fetch("SELECT id FROM ai_messages")] == [seeded["msg_a"]]
        assert await app_conn.fetchval("SELECT count(*) FROM ai_cost_usage") == 1
        assert await app_conn.fetchval("SELECT count(*) FROM ai_sessions WHERE id = $1", seeded["sess_b"]) == 0


async def test_org_a_cannot_update_or_delete_org_b(app_conn: asyncpg.Connection, seeded: dict[str, str]) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        assert (
            await app_conn.execute("UPDATE ai_sessions SET title = 'x' WHERE id = $1", seeded["sess_b"]) == "UPDATE 0"
        )
        assert await app_conn.execute("DELETE FROM ai_messages WHERE id = $1", seeded["msg_b"]) == "DELETE 0"
        assert await app_conn.execute("DELETE FROM ai_cost_usage WHERE org_id = $1", seeded["org_b"]) == "DELETE 0"
    async with app_conn.transaction():
        await as_tenant(app_conn, "system", "")
        assert await app_conn.fetchval("SELECT title FROM ai_sessions WHERE id = $1", seeded["sess_b"]) is None
        assert await app_conn.fetchval("SELECT count(*) FROM ai_messages") == 2


async def test_org_a_cannot_move_its_session_to_org_b(app_conn: asyncpg.Connection, seeded: dict[str, str]) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute(
                "UPDATE ai_sessions SET org_id = $1 WHERE id = $2", seeded["org_b"], seeded["sess_a"]
            )


async def test_org_a_cannot_insert_rows_for_org_b(app_conn: asyncpg.Connection, seeded: dict[str, str]) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute(
                "INSERT INTO ai_cost_usage VALUES ($1, $2, 'monthly', '2026-01', 1, 1, 0, 0, 1, 0, 1, $3)",
                str(uuid.uuid4()),
                seeded["org_b"],
                NOW,
            )


async def test_a_message_into_another_orgs_session_is_refused(
    app_conn: asyncpg.Connection, seeded: dict[str, str]
) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute(
                "INSERT INTO ai_messages (id, session_id, role, content, usage_estimated, created_at) "
                "VALUES ($1, $2, 'user', 'injected', false, $3)",
                str(uuid.uuid4()),
                seeded["sess_b"],
                NOW,
            )


async def test_partner_scope_sees_its_listed_orgs(app_conn: asyncpg.Connection, seeded: dict[str, str]) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "partner", f"{seeded['org_a']},{seeded['org_b']}")
        assert await app_conn.fetchval("SELECT count(*) FROM ai_sessions") == 2


async def test_an_unknown_scope_sees_nothing(app_conn: asyncpg.Connection, seeded: dict[str, str]) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "admin", seeded["org_a"])
        assert await app_conn.fetchval("SELECT count(*) FROM ai_sessions") == 0


async def test_org_b_sees_only_its_own_organization_and_users(
    app_conn: asyncpg.Connection, seeded: dict[str, str]
) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_b"])
        assert [r["name"] for r in await app_conn.fetch("SELECT name FROM organizations")] == ["org_b"]
        assert [r["id"] for r in await app_conn.fetch("SELECT id FROM users")] == [seeded["user_b"]]
        assert await app_conn.fetchval("SELECT count(*) FROM users WHERE org_id = $1", seeded["org_a"]) == 0
    async with app_conn.transaction():
        await as_tenant(app_conn, "partner", f"{seeded['org_a']},{seeded['org_b']}")
        assert await app_conn.fetchval("SELECT count(*) FROM organizations") == 2
        assert await app_conn.fetchval("SELECT count(*) FROM users") == 2
    async with app_conn.transaction():
        await as_tenant(app_conn, "system", "")
        assert await app_conn.fetchval("SELECT count(*) FROM organizations") == 2
        assert await app_conn.fetchval("SELECT count(*) FROM users") == 2


async def test_a_user_outside_any_visible_organization_sees_only_itself(
    app_conn: asyncpg.Connection, seeded: dict[str, str], pg_database: DatabaseUrls
) -> None:
    """A user without an organization (a partner's or an administrator's) reads its own row."""
    loner = str(uuid.uuid4())
    owner = await asyncpg.connect(_dsn(pg_database.admin))
    try:
        await owner.execute("SELECT set_config('parley.scope', 'system', false)")
        await owner.execute("INSERT INTO users VALUES ($1, NULL, 'loner@x', 'loner', $2)", loner, NOW)
    finally:
        await owner.close()
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"], user_id=loner)
        assert {r["id"] for r in await app_conn.fetch("SELECT id FROM users")} == {seeded["user_a"], loner}
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"], user_id=seeded["user_b"])
        assert {r["id"] for r in await app_conn.fetch("SELECT id FROM users")} == {seeded["user_a"], seeded["user_b"]}


async def test_org_a_cannot_change_or_add_to_org_b_tenant_rows(
    app_conn: asyncpg.Connection, seeded: dict[str, str]
) -> None:
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        assert (
            await app_conn.execute("UPDATE organizations SET name = 'x' WHERE id = $1", seeded["org_b"]) == "UPDATE 0"
        )
        assert await app_conn.execute("UPDATE users SET name = 'x' WHERE id = $1", seeded["user_b"]) == "UPDATE 0"
        assert await app_conn.execute("DELETE FROM users WHERE org_id = $1", seeded["org_b"]) == "DELETE 0"
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute(
                "INSERT INTO users VALUES ($1, $2, 'mole@x', 'mole', $3)", str(uuid.uuid4()), seeded["org_b"], NOW
            )
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await app_conn.execute("UPDATE users SET org_id = $1 WHERE id = $2", seeded["org_b"], seeded["user_a"])


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM ai_sessions",
        "SELECT * FROM ai_messages",
        "SELECT * FROM organizations",
        "SELECT * FROM users",
        "SELECT * FROM api_tokens",
        "SELECT * FROM ai_tool_executions",
    ],
)
async def test_policies_read_the_tenant_settings_once_per_statement(
    app_conn: asyncpg.Connection, seeded: dict[str, str], query: str
) -> None:
    """current_setting() runs in InitPlans (once per statement), and the visibility function is
    inlined: the filter on each row compares columns with the InitPlans' results."""
    async with app_conn.transaction():
        await as_tenant(app_conn, "organization", seeded["org_a"])
        plan = [r[0] for r in await app_conn.fetch(f"EXPLAIN (VERBOSE, COSTS OFF) {query}")]
    text = "\n".join(plan)
    assert "InitPlan" in text, text
    assert "parley_org_visible" not in text, text  # inlined, not called per row
    for line in plan:
        if "current_setting" in line:
            assert line.lstrip().startswith("Output:"), text  # only as the output of an InitPlan
