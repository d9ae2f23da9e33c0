"""Plain `sqlite3` connections whose calls run inline on the event loop (no thread hop per call).

A SQLite statement on a local WAL database takes microseconds; running each call on a worker
thread (as aiosqlite does) costs about a hundred microseconds of CPU per call and a wait for the
GIL whenever the loop is busy. So parley calls `sqlite3` on the loop thread. Consequences, all
deliberate:

- A unit of work that awaits only the database never yields to the loop between BEGIN and
  COMMIT, so write transactions of one process never wait on each other; the one transaction
  that outlives a loop round, the commit group (`commit_group.py`), is the only writer.
- A statement blocks the loop while it runs: fine for parley's queries (microseconds; a
  10,000-message history is tens of milliseconds).
- Another process holding the write lock (the CLI, a backup tool) makes BEGIN IMMEDIATE wait in
  SQLite's busy handler on the loop thread, up to the connection's timeout (the database's wait,
  `PARLEY_DB_POOL_TIMEOUT_SECONDS`; then the request answers 503). SQLite is a single-server
  database; PostgreSQL is the multi-process one.

Imports: standard library only.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def _unicode_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def connect(path: str, *, timeout: float) -> sqlite3.Connection:
    """A connection in parley's settings: autocommit (parley issues BEGIN itself), WAL, foreign keys."""
    # check_same_thread=False: a pool may be closed from another thread at interpreter exit.
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    # SQLite's own lower() folds ASCII only; search must match "Übersicht" with "übersicht".
    conn.create_function("lower", 1, _unicode_lower, deterministic=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class DriverPool:
    """Idle connections to one SQLite file, taken for one unit of work and given back.

    One that is still inside a transaction when given back (a bug) is closed rather than reused.
    """

    __slots__ = ("_idle", "_path", "_timeout")

    def __init__(self, path: str, *, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._idle: list[sqlite3.Connection] = []

    def take(self) -> sqlite3.Connection:
        if self._idle:
            return self._idle.pop()
        return connect(self._path, timeout=self._timeout)

    def give_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
