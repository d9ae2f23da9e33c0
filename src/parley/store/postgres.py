"""PostgreSQL roles: the application connects as a role that is not the tables' owner, not
superuser and has no BYPASSRLS, so row-level security applies to every query it makes.

`ensure_app_role` runs from `parley migrate` with the admin (owning) connection: it creates the
app role when it can and it is missing, and (re)grants exactly the DML it needs: on the audit
trail (`APPEND_ONLY`) only SELECT and INSERT, so a row once written cannot be changed or deleted
by the application; old rows go through the owner's pruning function, which it may call.
`app_role_problems` runs at server start on the app connection and says what is unsafe about the
role it got.
"""

from __future__ import annotations

from sqlalchemy import Boolean, String, column, func, select, table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.store.models import Base
from parley.store.sql import Tx

# Tables the application appends to and reads, never changes.
APPEND_ONLY = ("ai_audit_events",)
PRUNE_FUNCTION = "parley_prune_audit_events(integer)"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_app_role(conn: AsyncConnection, role: str, password: str | None) -> list[str]:
    """Create (if missing) and grant the app role; returns what was done, for the operator."""
    done: list[str] = []
    exists = (await conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})).first()
    if exists is None:
        pw = " PASSWORD " + "'" + password.replace("'", "''") + "'" if password else ""
        await conn.execute(
            text(f"CREATE ROLE {_ident(role)} LOGIN{pw} NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT")
        )
        done.append(f"created role {role}")
    db = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    await conn.execute(text(f"GRANT CONNECT ON DATABASE {_ident(db)} TO {_ident(role)}"))
    await conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {_ident(role)}"))
    writable = ", ".join(_ident(t) for t in Base.metadata.tables if t not in APPEND_ONLY)
    append_only = ", ".join(_ident(t) for t in APPEND_ONLY)
    await conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {writable} TO {_ident(role)}"))
    # Revoked too, so a role granted more by an earlier version loses it.
    await conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {append_only} FROM {_ident(role)}"))
    await conn.execute(text(f"GRANT SELECT, INSERT ON {append_only} TO {_ident(role)}"))
    await conn.execute(text(f"GRANT EXECUTE ON FUNCTION {PRUNE_FUNCTION} TO {_ident(role)}"))
    await conn.execute(text(f"GRANT SELECT ON alembic_version TO {_ident(role)}"))
    done.append(
        f"granted DML on {len(Base.metadata.tables) - len(APPEND_ONLY)} tables to {role}, "
        f"SELECT and INSERT only on {', '.join(APPEND_ONLY)}"
    )
    return done


_ROLES = table("pg_roles", column("rolname", String), column("rolsuper", Boolean), column("rolbypassrls", Boolean))
_TABLES = table("pg_tables", column("schemaname", String), column("tableowner", String))
_ROLE = select(func.current_user(), _ROLES.c.rolsuper, _ROLES.c.rolbypassrls).where(
    _ROLES.c.rolname == func.current_user()
)
_OWNED = select(func.count()).where(_TABLES.c.schemaname == "public", _TABLES.c.tableowner == func.current_user())


async def app_role_problems(tx: Tx) -> list[str]:
    """Why the connected role would weaken row-level security (empty when it would not)."""
    problems: list[str] = []
    row = await tx.row(_ROLE)
    assert row is not None, "the connected role is in pg_roles"
    user, superuser, bypass = row
    if superuser:
        problems.append(f"role {user} is a superuser: row-level security does not apply to it")
    if bypass:
        problems.append(f"role {user} has BYPASSRLS: row-level security does not apply to it")
    owned = await tx.value(_OWNED)
    if owned:
        problems.append(f"role {user} owns {owned} tables: connect as a separate application role")
    return problems
