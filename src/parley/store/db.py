"""Engine, units of work, and migrations.

Tables are touched only inside a unit of work: `Database.transaction(tenant)` (the ORM) or
`Database.turn_transaction(tenant)` (the turn path's plain SQL; on a SQLite file, group-committed
in bursts, `commit_group.py`). Each is committed on success and rolled back on error, with the
tenant's settings applied first on PostgreSQL (`set_config(..., true)`, transaction-local, so a
pooled connection never leaks them). Repositories never commit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from parley.errors import ServiceUnavailableError
from parley.store.commit_group import CommitGroup
from parley.store.sqlite_inline import DriverPool, inline_creator
from parley.store.tenancy import Tenant
from parley.store.turn_store import DriverTx, EngineTx, TurnTx

log = logging.getLogger("parley.store")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class Database:
    """One engine and its session factory."""

    def __init__(
        self, url: str, *, echo: bool = False, pool_size: int = 20, max_overflow: int = 10, pool_timeout: float = 5.0
    ) -> None:
        """`pool_timeout`: how long a unit of work waits for the database before it answers 503: for a
        pooled connection on PostgreSQL; on SQLite, for the write lock another process holds."""
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        self._driver_pool: DriverPool | None = None
        self._commit_group: CommitGroup | None = None
        if self.dialect == "sqlite":
            db_path = parsed.database
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            # sqlite3's connect timeout is SQLite's busy timeout: the wait for another process's lock.
            kwargs["connect_args"] = {"timeout": pool_timeout}
            if db_path and db_path != ":memory:":
                kwargs["async_creator"] = inline_creator(db_path, timeout=pool_timeout)
                pool = DriverPool(db_path, timeout=pool_timeout, prepare=lambda conn: _sqlite_pragmas(conn, None))
                self._driver_pool = pool
                self._commit_group = CommitGroup(pool.take, pool.give_back)
        else:
            # pre_ping: a connection broken by a database restart is replaced, not handed out.
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", self._sqlite_begin)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def _sqlite_begin(self, conn: Connection) -> None:
        if conn.get_execution_options().get("parley_readonly", False):
            conn.exec_driver_sql("BEGIN DEFERRED")
            return
        if self._commit_group is not None:
            # This process's turn writes may hold the write lock until the loop's next round;
            # commit them first rather than wait for the lock on the loop thread.
            self._commit_group.flush()
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    @asynccontextmanager
    async def transaction(self, tenant: Tenant, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """One unit of work for `tenant`, committed on success.

        On SQLite a writing transaction starts with BEGIN IMMEDIATE: it takes the write lock up
        front, so two read-then-write transactions queue instead of failing with a stale
        snapshot. `readonly` ones start deferred and run beside writers (WAL).
        """
        with _unavailable_as_503():
            async with self.sessions() as session, session.begin():
                if readonly:
                    await session.connection(execution_options={"parley_readonly": True})
                if self.is_postgres:
                    await _apply_tenant(session, tenant)
                yield session

    @asynccontextmanager
    async def turn_transaction(self, tenant: Tenant) -> AsyncIterator[TurnTx]:
        """A writing unit of work of the turn path (`store/turn_store.py`) for `tenant`.

        On a SQLite file it runs on a plain `sqlite3` connection, inline, as one unit of the loop
        round's group transaction (`store/commit_group.py`): the statements run at once, nothing
        else on the loop runs in between, and this returns once the group has committed.
        Elsewhere it runs on an engine connection with the tenant's settings, like `transaction`.
        """
        group = self._commit_group
        if group is not None:
            with _unavailable_as_503():
                async with group.unit() as conn:
                    yield DriverTx(conn)
            return
        with _unavailable_as_503():
            async with self.engine.connect() as engine_conn, engine_conn.begin():
                if self.is_postgres:
                    await _apply_tenant(engine_conn, tenant)
                yield EngineTx(engine_conn)

    async def migrate(self, admin_url: str | None = None) -> list[str]:
        """Bring the schema to the newest revision (Alembic), in one transaction.

        On PostgreSQL, `admin_url` (the tables' owner) runs the migration and then creates or
        grants the application role of `self.url`, which must not own the tables.
        """
        if admin_url is None or admin_url == self.url:
            async with self.engine.begin() as conn:
                await conn.run_sync(_upgrade)
            return ["schema is at the newest revision"]
        from parley.store.postgres import ensure_app_role

        admin = create_async_engine(admin_url)
        try:
            async with admin.begin() as conn:
                await conn.run_sync(_upgrade)
                app = make_url(self.url)
                done = await ensure_app_role(conn, app.username or "", app.password)
        finally:
            await admin.dispose()
        return ["schema is at the newest revision", *done]

    async def schema_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            try:
                return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
            except DBAPIError:
                return None

    async def wait_until_reachable(self, *, attempts: int = 0, delay: float = 1.0, max_delay: float = 15.0) -> None:
        """Block until a connection succeeds (forever when `attempts` is 0), logging each retry."""
        tried = 0
        while True:
            try:
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
                return
            except (DBAPIError, OSError) as exc:
                tried += 1
                if attempts and tried >= attempts:
                    raise ServiceUnavailableError("The database is unreachable.") from exc
                log.warning("database not reachable (%s); retrying in %.0f s", exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def dispose(self) -> None:
        if self._commit_group is not None:
            self._commit_group.flush()
        if self._driver_pool is not None:
            self._driver_pool.close()
        await self.engine.dispose()


@contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """A database that is down, restarting or out of connections answers 503, never a hang."""
    try:
        yield
    except (OperationalError, InterfaceError, sqlite3.OperationalError) as exc:
        if _is_locked(exc):  # another process held SQLite's write lock past the wait
            log.warning("database busy: the write lock was not free in time")
            raise ServiceUnavailableError("The database is busy. Please try again.") from exc
        if not isinstance(exc, sqlite3.OperationalError) and _is_unavailable(exc):
            log.warning("database unavailable: %s", exc.__class__.__name__)
            raise ServiceUnavailableError("The database is unavailable. Please try again.") from exc
        raise
    except PoolTimeoutError as exc:  # every pooled connection is busy: a bounded wait, then 503
        log.warning("database pool exhausted")
        raise ServiceUnavailableError("The server is busy. Please try again.") from exc
    except OSError as exc:  # refused or reset while connecting
        log.warning("database unreachable: %s", exc)
        raise ServiceUnavailableError("The database is unavailable. Please try again.") from exc


async def _apply_tenant(session: AsyncSession | AsyncConnection, tenant: Tenant) -> None:
    orgs = "*" if tenant.sees_all else ",".join(sorted(tenant.org_ids))
    await session.execute(
        text(
            "SELECT set_config('parley.scope', :scope, true), "
            "set_config('parley.org_ids', :orgs, true), "
            "set_config('parley.user_id', :user, true)"
        ),
        {"scope": tenant.scope, "orgs": orgs, "user": tenant.user_id or ""},
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # parley issues BEGIN itself (see _sqlite_begin)
    # SQLite's own lower() folds ASCII only; search must match "Übersicht" with "übersicht".
    dbapi_conn.create_function("lower", 1, _unicode_lower, deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _is_locked(exc: BaseException) -> bool:
    original = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(original, sqlite3.OperationalError) and "database is locked" in str(original)


def _is_unavailable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text_ = str(exc.orig).lower()
    return any(
        s in text_
        for s in (
            "connection refused",
            "connection was closed",
            "terminating connection",
            "could not connect",
            "cannot connect",
            "connection is closed",
            "server closed the connection",
        )
    )


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
