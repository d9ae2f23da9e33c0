"""The database: connection pools, units of work, migrations.

Tables are touched only inside a unit of work, `Database.unit(tenant)`, which yields a `Tx`
(`sql.py`) and is committed on success and rolled back on error. Queries never commit.

- SQLite file: writing units run on `sqlite3` connections inline on the loop, group-committed in
  bursts (`commit_group.py`); reading units run beside them (WAL).
- PostgreSQL: asyncpg's pool. Each unit first sets the tenant as transaction-local settings
  (`SET LOCAL`), which row-level security reads; a pooled connection never leaks them.

A database that is down, restarting, out of connections or locked by another process answers 503
(`ServiceUnavailableError`) after a bounded wait, never a hang. SQLAlchemy is used here only to
run Alembic migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import ClauseElement, String, column, select, table
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from parley import metrics
from parley.errors import ServiceUnavailableError
from parley.store.commit_group import CommitGroup
from parley.store.sql import Params, PostgresTx, SqliteTx, Tx
from parley.store.sqlite_pool import DriverPool
from parley.store.tenancy import Tenant

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("parley.store")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_REVISION = select(table("alembic_version", column("version_num", String)).c.version_num)
# `SET LOCAL` is `set_config(..., true)` as a utility statement: no planning or executor start-up,
# half the server's CPU of a SELECT of three calls (`docs/performance-log.md`).
_SET_TENANT = "SET LOCAL parley.scope = {}; SET LOCAL parley.org_ids = {}; SET LOCAL parley.user_id = {}"


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings: only the quote is special)."""
    return "'" + value.replace("'", "''") + "'"


def _begin(tenant: Tenant, readonly: bool) -> str:
    """BEGIN and the tenant's transaction-local settings, sent as one simple query: one round trip."""
    settings = _SET_TENANT.format(_literal(tenant.scope), _literal(tenant.org_list), _literal(tenant.user_id or ""))
    return f"BEGIN{' READ ONLY' if readonly else ''}; {settings}"


async def _keep_connection_state(_conn: asyncpg.Connection) -> None:
    """What a pooled connection needs when it goes back: nothing (asyncpg rolls back an open
    transaction itself). parley keeps no session state on a connection (its settings are
    transaction-local, it never LISTENs, takes advisory locks or leaves cursors open), so the
    default reset (RESET ALL, CLOSE ALL, UNLISTEN *, pg_advisory_unlock_all: a round trip per unit)
    would reset nothing."""


class Database:
    """One database: its pools and units of work (see the module docstring)."""

    def __init__(
        self, url: str, *, pool_size: int = 20, pool_timeout: float = 5.0, statement_timeout: float = 30.0
    ) -> None:
        """`pool_timeout`: how long a unit of work waits for the database before it answers 503: for a
        pooled connection on PostgreSQL; on SQLite, for the write lock another process holds.
        `statement_timeout` (PostgreSQL): the server's `statement_timeout` and
        `idle_in_transaction_session_timeout` on parley's connections; past it, 503."""
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self.statement_timeout = statement_timeout
        self._pg_pool: asyncpg.Pool | None = None
        self._pg_opening: asyncio.Lock | None = None
        self._admissions: asyncio.Semaphore | None = None
        if self.dialect == "sqlite":
            path = parsed.database
            if not path or path == ":memory:" or path.startswith("file:"):
                raise ValueError("parley needs a SQLite file (an in-memory database is not shared between connections)")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.sqlite_path = path
            self._sqlite_pool = DriverPool(path, timeout=pool_timeout)
            self._commit_group = CommitGroup(self._sqlite_pool.take, self._sqlite_pool.give_back)
        elif self.dialect != "postgresql":
            raise ValueError(f"unsupported database: {self.dialect}")

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def unit(self, tenant: Tenant, *, readonly: bool = False, admission: bool = False) -> AsyncIterator[Tx]:
        """One unit of work for `tenant`, committed when the block ends without an error.

        On SQLite a writing unit is committed (with its loop round's group) before this returns, so
        no caller acts on a write that is not durable; `readonly` units start deferred and run
        beside writers. How long it waited for its connection (or SQLite's write turn) goes to
        `parley_db_wait_seconds`.

        On PostgreSQL, `admission` units (those that start new turns) hold at most
        `admission_slots` of the pool's connections together: the rest stay for the units that
        finish turns (storing a reply, releasing a lease, the upkeep), which a burst of admissions
        must never keep waiting past the pool's timeout (a reply that cannot be stored is lost).
        """
        waiting = time.perf_counter()
        if self.dialect == "sqlite":
            with _unavailable_as_503():
                if readonly:
                    conn = self._sqlite_pool.take()
                    try:
                        conn.execute("BEGIN")
                        metrics.db_waited(time.perf_counter() - waiting)
                        try:
                            yield SqliteTx(conn)
                        finally:
                            conn.execute("ROLLBACK")
                    finally:
                        self._sqlite_pool.give_back(conn)
                else:
                    async with self._commit_group.unit() as conn:
                        metrics.db_waited(time.perf_counter() - waiting)
                        yield SqliteTx(conn)
            return
        pool = await self._postgres_pool()
        with _unavailable_as_503():
            async with self._admission_slot(admission), pool.acquire(timeout=self._time_left(waiting)) as conn:
                metrics.db_waited(time.perf_counter() - waiting)
                await conn.execute(_begin(tenant, readonly))
                try:
                    yield PostgresTx(conn)
                except BaseException:
                    if not conn.is_closed():
                        with contextlib.suppress(Exception):  # a broken connection is dropped on release
                            await conn.execute("ROLLBACK")
                    raise
                await conn.execute("COMMIT")

    @property
    def admission_slots(self) -> int:
        """How many pooled connections admissions may hold together: all but a fifth (at least one)."""
        return max(1, self.pool_size - max(1, self.pool_size // 5))

    @asynccontextmanager
    async def _admission_slot(self, admission: bool) -> AsyncIterator[None]:
        if not admission:
            yield
            return
        if self._admissions is None:
            self._admissions = asyncio.Semaphore(self.admission_slots)
        await asyncio.wait_for(self._admissions.acquire(), self.pool_timeout)
        try:
            yield
        finally:
            self._admissions.release()

    def _time_left(self, since: float) -> float:
        """What is left of the pool's timeout for a unit that started waiting at `since`."""
        return max(0.001, self.pool_timeout - (time.perf_counter() - since))

    async def autocommit(self, statement: ClauseElement, params: Params) -> None:
        """PostgreSQL only: one statement sent outside any transaction, which the server runs and
        commits as its own before it answers: one round trip, no BEGIN or COMMIT, and its row locks
        held only while it runs. It sets its tenant itself (a function that calls
        `set_config(..., true)` first, such as `parley_store_turn`); without that, row-level
        security shows it nothing."""
        if not self.is_postgres:
            raise RuntimeError("autocommit is for PostgreSQL; on SQLite use a unit of work")
        waiting = time.perf_counter()
        pool = await self._postgres_pool()
        with _unavailable_as_503():
            async with pool.acquire(timeout=self.pool_timeout) as conn:
                metrics.db_waited(time.perf_counter() - waiting)
                await PostgresTx(conn).run(statement, params)

    async def _postgres_pool(self) -> asyncpg.Pool:
        if self._pg_pool is not None:
            return self._pg_pool
        if self._pg_opening is None:
            self._pg_opening = asyncio.Lock()
        async with self._pg_opening:
            if self._pg_pool is None:
                import asyncpg

                with _unavailable_as_503():
                    self._pg_pool = await asyncpg.create_pool(
                        _asyncpg_dsn(self.url),
                        min_size=0,
                        max_size=self.pool_size,
                        init=_init_postgres_connection,
                        reset=_keep_connection_state,
                        server_settings={
                            "application_name": "parley",
                            "standard_conforming_strings": "on",  # what `_literal` quotes for
                            "statement_timeout": f"{round(self.statement_timeout * 1000)}ms",
                            "idle_in_transaction_session_timeout": f"{round(self.statement_timeout * 1000)}ms",
                        },
                        timeout=self.pool_timeout,
                    )
        assert self._pg_pool is not None
        return self._pg_pool

    async def migrate(self, admin_url: str | None = None) -> list[str]:
        """Bring the schema to the newest revision (Alembic), in one transaction.

        On PostgreSQL, `admin_url` (the tables' owner) runs the migration and then creates or
        grants the application role of `self.url`, which must not own the tables.
        """
        engine = create_async_engine(_alembic_url(admin_url or self.url))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade)
                done = ["schema is at the newest revision"]
                if admin_url is not None and admin_url != self.url and self.is_postgres:
                    from parley.store.postgres import ensure_app_role

                    app = make_url(self.url)
                    done += await ensure_app_role(conn, app.username or "", app.password)
        finally:
            await engine.dispose()
        return done

    async def schema_revision(self) -> str | None:
        try:
            async with self.unit(Tenant.system(), readonly=True) as tx:
                return await tx.value(_REVISION)
        except (sqlite3.OperationalError, _postgres_error()):
            return None  # no alembic_version table yet

    async def wait_until_reachable(self, *, attempts: int = 0, delay: float = 1.0, max_delay: float = 15.0) -> None:
        """Block until a unit of work succeeds (forever when `attempts` is 0), logging each retry."""
        tried = 0
        while True:
            try:
                async with self.unit(Tenant.system(), readonly=True):
                    return
            except ServiceUnavailableError as exc:
                tried += 1
                if attempts and tried >= attempts:
                    raise ServiceUnavailableError("The database is unreachable.") from exc
                log.warning("database not reachable (%s); retrying in %.0f s", exc.__cause__.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def dispose(self) -> None:
        if self.dialect == "sqlite":
            self._commit_group.flush()
            self._sqlite_pool.close()
        elif self._pg_pool is not None:
            pool, self._pg_pool = self._pg_pool, None
            await pool.close()


async def _init_postgres_connection(conn: asyncpg.Connection) -> None:
    # JSON crosses as text: SQLAlchemy's JSON type serialises binds; rows are decoded here.
    await conn.set_type_codec("json", encoder=lambda value: value, decoder=orjson.loads, schema="pg_catalog")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _alembic_url(url: str) -> str:
    parsed = make_url(url)
    return (
        parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
        if parsed.get_backend_name() == "sqlite"
        else url
    )


def _postgres_error() -> type[Exception]:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - PostgreSQL is an extra
        return sqlite3.OperationalError
    error: type[Exception] = asyncpg.PostgresError
    return error


@contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """A database that is down, restarting, out of connections or locked answers 503, never a hang."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "database is locked" in str(exc):  # another process held SQLite's write lock past the wait
            log.warning("database busy: the write lock was not free in time")
            raise ServiceUnavailableError("The database is busy. Please try again.") from exc
        raise
    except TimeoutError as exc:  # every pooled connection is busy: a bounded wait, then 503
        log.warning("database pool exhausted or not answering")
        raise ServiceUnavailableError("The server is busy. Please try again.") from exc
    except OSError as exc:  # refused or reset while connecting
        log.warning("database unreachable: %s", exc)
        raise ServiceUnavailableError("The database is unavailable. Please try again.") from exc
    except Exception as exc:
        if _is_cancelled(exc):
            log.warning("database statement cancelled: it ran past PARLEY_DB_STATEMENT_TIMEOUT_SECONDS")
            raise ServiceUnavailableError("The database took too long to answer. Please try again.") from exc
        if _is_unavailable(exc):
            log.warning("database unavailable: %s", exc.__class__.__name__)
            raise ServiceUnavailableError("The database is unavailable. Please try again.") from exc
        raise


def _is_unavailable(exc: Exception) -> bool:
    """asyncpg's errors that mean the server or the connection is gone (not a bad statement)."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc,
        asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.ConnectionFailureError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.TooManyConnectionsError
        | asyncpg.exceptions.InternalClientError
        | asyncpg.InterfaceError,
    )


def _is_cancelled(exc: Exception) -> bool:
    """The server cancelled a statement: it ran past the statement timeout."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, asyncpg.exceptions.QueryCanceledError)


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
