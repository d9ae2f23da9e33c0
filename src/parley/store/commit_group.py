"""Group commit for the turn path on a SQLite file: the units of work of one loop round share a COMMIT.

A turn's admission writes about ten pages (the session row, the message and its four index
entries); its COMMIT writes each of them to the WAL and costs more than all its statements
(docs/performance.md). A burst of requests is admitted in one round of the event loop, and
their pages are mostly the same (table leaves, the newest index leaves), so they commit
together. The round's first unit runs in a transaction of its own, committed at once: alone, a
turn waits for nothing. The next unit of the same round opens a group transaction (BEGIN
IMMEDIATE) whose COMMIT runs at the start of the loop's next round, and the round's later units
join it. Each unit of a group runs inside its own SAVEPOINT, so a unit that fails rolls back
alone, and waits for the COMMIT before returning, so no caller acts on a write that is not
durable yet.

Rules, all relied upon:
- A unit's body never suspends (its statements run inline, `sqlite_pool.py`): units of one
  group run one after another on one connection and see each other's writes, as serial
  transactions would.
- Another write transaction of this process must not start while a group holds the write lock
  (it would wait in SQLite's busy handler on the loop thread, which the COMMIT needs): it calls
  `flush()` first, which commits the group at once (`Database` does so in its BEGIN hook).
- A COMMIT that fails fails every unit of its group; a unit whose caller is cancelled while it
  waits is still committed with its group, as if it had been cancelled just after its own COMMIT.

Imports: standard library only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class _Group:
    """One group transaction: its connection, the units waiting for its COMMIT, and how it failed."""

    __slots__ = ("conn", "failure", "waiters")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn: sqlite3.Connection | None = conn  # None once finished
        self.waiters: list[asyncio.Future[None]] = []
        self.failure: BaseException | None = None  # what ended its transaction before the COMMIT


class CommitGroup:
    """Opens group transactions on connections of a pool and commits them once per loop round."""

    __slots__ = ("_committed_this_round", "_current", "_give_back", "_in_unit", "_take")

    def __init__(self, take: Callable[[], sqlite3.Connection], give_back: Callable[[sqlite3.Connection], None]) -> None:
        self._take = take
        self._give_back = give_back
        self._current: _Group | None = None
        self._in_unit = False
        self._committed_this_round = False

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[sqlite3.Connection]:
        """One unit of work, committed when this returns: the round's first alone and at once,
        the others in the round's group."""
        if self._in_unit:
            raise RuntimeError("a group-commit unit suspended before it finished (units must not await I/O)")
        if self._current is None and not self._committed_this_round:
            conn = self._take()
            self._in_unit = True
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                conn.execute("COMMIT")
            finally:
                self._in_unit = False
                self._give_back(conn)
                self._committed_this_round = True
                asyncio.get_running_loop().call_soon(self._next_round)
            return
        group = self._current or self._open()
        shared = group.conn
        assert shared is not None
        self._in_unit = True
        try:
            shared.execute("SAVEPOINT unit")
            try:
                yield shared
            except BaseException as exc:
                self._undo(group, shared, exc)
                raise
            shared.execute("RELEASE unit")
        finally:
            self._in_unit = False
        done = asyncio.get_running_loop().create_future()
        group.waiters.append(done)
        await done

    def flush(self) -> None:
        """Commit the open group now (a no-op when none is open) and wake its units."""
        if self._in_unit:
            raise RuntimeError("flush() inside a group-commit unit")
        if self._current is not None:
            self._finish(self._current)

    def _next_round(self) -> None:
        self._committed_this_round = False

    def _open(self) -> _Group:
        conn = self._take()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._give_back(conn)
            raise
        group = self._current = _Group(conn)
        asyncio.get_running_loop().call_soon(self._finish_due, group)
        return group

    def _finish_due(self, group: _Group) -> None:
        if self._in_unit and self._current is group:  # a unit broke the rule and suspended: never commit mid-unit
            asyncio.get_running_loop().call_soon(self._finish_due, group)
            return
        self._finish(group)

    def _finish(self, group: _Group) -> None:
        conn = group.conn
        if conn is None:  # already finished (flushed early, or failed)
            return
        group.conn = None
        if self._current is group:
            self._current = None
        failure = group.failure
        try:
            if failure is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    failure = exc
            if conn.in_transaction:
                conn.rollback()
        finally:
            self._give_back(conn)
        for waiter in group.waiters:
            if waiter.done():  # its caller was cancelled; the unit was committed all the same
                continue
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(_group_failed(failure))

    def _undo(self, group: _Group, conn: sqlite3.Connection, exc: BaseException) -> None:
        """Roll back the failed unit alone; when SQLite has ended the whole transaction (a full
        disk, an I/O error), the group is over: its earlier units fail, later ones open another."""
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
                return
            except sqlite3.Error as undo_error:
                exc = undo_error
        group.failure = exc
        self._finish(group)


def _group_failed(cause: BaseException) -> sqlite3.Error:
    """A fresh exception per waiting unit (one instance raised in many tasks would share a traceback)."""
    error = sqlite3.OperationalError(f"the group's transaction failed: {cause}")
    error.__cause__ = cause
    return error
