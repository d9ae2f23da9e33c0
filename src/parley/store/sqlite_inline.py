"""SQLite for the asyncio engine without a thread per connection: sqlite3 calls run inline.

SQLAlchemy's aiosqlite dialect talks to aiosqlite, which runs every call (cursor, execute, fetch,
commit) on a worker thread and wakes the event loop with the result: about 100 µs of CPU per
call on a 2-core machine, plus a wait for the GIL whenever the loop is busy, so several
milliseconds per transaction under load. A SQLite statement on a local WAL database takes a few
microseconds, so this module gives the dialect aiosqlite's API over a plain `sqlite3` connection
and runs each call on the event loop thread (`create_async_engine(..., async_creator=...)`).

Consequences, all deliberate:
- A unit of work that awaits only the database never yields to the loop between BEGIN and COMMIT,
  so write transactions of one process never wait on each other (SQLite's busy handler, which
  sleeps in steps of up to 100 ms, is not reached in-process). The one transaction that outlives
  a round of the loop, the turn path's group (`commit_group.py`), is committed by `Database`'s
  BEGIN hook before any other write begins.
- A statement blocks the loop while it runs: fine for parley's queries (microseconds; a
  10,000-message history is tens of milliseconds, which aiosqlite also spent holding the GIL).
- Another process holding the write lock (the CLI, a second server) makes BEGIN IMMEDIATE wait in
  SQLite's busy handler on the loop thread, up to `busy_timeout` (the database's wait,
  `PARLEY_DB_POOL_TIMEOUT_SECONDS`; then the request answers 503): SQLite is a single-server
  database; PostgreSQL is the multi-process one.

Imports: standard library only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class InlineCursor:
    """aiosqlite's cursor API over a sqlite3 cursor."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        if parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany() if size is None else self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _Immediate:
    """Stands in for aiosqlite's request queue: runs the function now, resolves the future."""

    __slots__ = ()

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:
            future.set_exception(exc)


class InlineConnection:
    """aiosqlite's connection API over a sqlite3 connection (what SQLAlchemy's adapter uses)."""

    __slots__ = ("_conn", "_connection", "_tx")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn  # None once closed, as in aiosqlite
        self._tx = _Immediate()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)


def inline_creator(path: str, *, timeout: float = 30.0) -> Callable[[], Any]:
    """An `async_creator` for create_async_engine: one sqlite3 connection per call."""

    async def connect() -> InlineConnection:
        # check_same_thread=False: the pool may close a connection from another thread at exit.
        conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
        return InlineConnection(conn)

    return connect


class DriverPool:
    """Plain `sqlite3` connections for code that speaks to the driver itself (`turn_store`).

    A connection is taken for one unit of work and given back; one that is still inside a
    transaction when given back (a bug) is closed rather than reused.
    """

    __slots__ = ("_idle", "_path", "_prepare", "_timeout")

    def __init__(self, path: str, *, timeout: float, prepare: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._timeout = timeout
        self._prepare = prepare
        self._idle: list[sqlite3.Connection] = []

    def take(self) -> sqlite3.Connection:
        if self._idle:
            return self._idle.pop()
        conn = sqlite3.connect(self._path, timeout=self._timeout, check_same_thread=False, isolation_level=None)
        self._prepare(conn)
        return conn

    def give_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
