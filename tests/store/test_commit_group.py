"""Group commit (store/commit_group.py) on a real SQLite file, and through `Database`.

Units of one loop round share one COMMIT; each is rolled back alone when it fails; a failed
COMMIT fails every unit; nothing returns before its write is committed; another write of the
process commits a pending group first instead of waiting for the lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from parley.store import repositories as repo
from parley.store.commit_group import CommitGroup
from parley.store.db import Database
from parley.store.repositories import TurnTotals, period_keys
from parley.store.sqlite_pool import DriverPool
from parley.store.tenancy import Tenant
from tests.conftest import Tenants

TOTALS = TurnTotals(
    input_tokens=11, output_tokens=5, cache_read_tokens=0, cache_write_tokens=0, cost_cents=Decimal("0.0108")
)
SCHEMA = (
    "CREATE TABLE parent (id TEXT PRIMARY KEY)",
    # Checked at COMMIT: the way to make a real COMMIT fail.
    "CREATE TABLE child (id TEXT PRIMARY KEY, parent_id TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
)


class Recorder:
    """A pool whose connections record every statement they run."""

    def __init__(self, path: Path) -> None:
        self.statements: list[str] = []
        self.pool = DriverPool(str(path), timeout=5)

    def take(self) -> sqlite3.Connection:
        conn = self.pool.take()
        conn.set_trace_callback(self.statements.append)
        return conn

    def control(self, kind: str) -> list[str]:
        return [s for s in self.statements if s.split()[0] == kind]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    db = tmp_path / "group.db"
    with sqlite3.connect(db) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO parent VALUES ('p')")
    return db


@pytest.fixture
def recorder(path: Path) -> Iterator[Recorder]:
    rec = Recorder(path)
    yield rec
    rec.pool.close()


def rows(path: Path) -> list[str]:
    """What a reader on another connection sees: only committed rows."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM child ORDER BY id")]


async def insert(group: CommitGroup, child: str, parent: str = "p", *, fail: bool = False) -> None:
    async with group.unit() as conn:
        conn.execute("INSERT INTO child VALUES (?, ?)", (child, parent))
        if fail:
            raise ValueError("refused after writing")


async def test_the_rounds_first_unit_commits_at_once_and_the_others_share_one_commit(
    path: Path, recorder: Recorder
) -> None:
    group = CommitGroup(recorder.take, recorder.pool.give_back)
    seen_on_return: dict[str, list[str]] = {}

    async def unit(child: str) -> None:
        await insert(group, child)
        seen_on_return[child] = rows(path)

    tasks = [asyncio.create_task(unit(c)) for c in ("a", "b", "c", "d")]
    await asyncio.sleep(0)
    assert [t.done() for t in tasks] == [True, False, False, False]  # "a" waited for nothing
    assert seen_on_return == {"a": ["a"]}
    await asyncio.gather(*tasks)
    assert recorder.control("BEGIN") == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE"]
    assert recorder.control("COMMIT") == ["COMMIT", "COMMIT"]
    assert len(recorder.control("SAVEPOINT")) == 3
    assert all(seen_on_return[c] == ["a", "b", "c", "d"] for c in "bcd"), seen_on_return

    await insert(group, "e")  # the next round's first unit: alone again
    assert recorder.control("COMMIT") == ["COMMIT", "COMMIT", "COMMIT"]
    assert len(recorder.control("SAVEPOINT")) == 3
    assert rows(path) == ["a", "b", "c", "d", "e"]


async def test_a_failing_unit_is_rolled_back_alone(path: Path, recorder: Recorder) -> None:
    group = CommitGroup(recorder.take, recorder.pool.give_back)
    results = await asyncio.gather(
        insert(group, "a", fail=True),  # alone
        insert(group, "b"),
        insert(group, "c", fail=True),  # in the group
        insert(group, "d"),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["ValueError", "NoneType", "ValueError", "NoneType"]
    assert rows(path) == ["b", "d"]
    assert len(recorder.control("COMMIT")) == 1


async def test_a_failed_commit_fails_every_unit_of_its_group_and_keeps_none(path: Path, recorder: Recorder) -> None:
    group = CommitGroup(recorder.take, recorder.pool.give_back)
    results = await asyncio.gather(
        insert(group, "a"),  # alone, committed
        insert(group, "b"),
        insert(group, "orphan", parent="missing"),
        insert(group, "d"),
        return_exceptions=True,
    )
    assert results[0] is None
    assert all(isinstance(r, sqlite3.Error) and "FOREIGN KEY" in str(r) for r in results[1:]), results
    assert rows(path) == ["a"]
    await insert(group, "e")  # the connection went back to the pool usable
    assert rows(path) == ["a", "e"]


async def test_when_sqlite_ends_the_transaction_the_earlier_units_fail_and_later_ones_commit(
    path: Path, recorder: Recorder
) -> None:
    group = CommitGroup(recorder.take, recorder.pool.give_back)

    async def interrupted() -> None:
        async with group.unit() as conn:
            # An interrupted write inside a transaction makes SQLite roll the whole transaction
            # back, as a full disk or an I/O error does.
            conn.set_progress_handler(lambda: 1, 1)
            try:
                conn.execute("INSERT INTO child VALUES ('x', 'p')")
            finally:
                conn.set_progress_handler(None, 0)

    results = await asyncio.gather(
        insert(group, "a"), insert(group, "b"), interrupted(), insert(group, "d"), return_exceptions=True
    )
    assert results[0] is None  # alone, committed before
    assert isinstance(results[1], sqlite3.Error), results
    assert "interrupted" in str(results[1])
    assert isinstance(results[2], sqlite3.OperationalError), results
    assert results[3] is None
    assert rows(path) == ["a", "d"]


async def test_a_unit_whose_caller_is_cancelled_while_waiting_is_still_committed(
    path: Path, recorder: Recorder
) -> None:
    group = CommitGroup(recorder.take, recorder.pool.give_back)
    first = asyncio.create_task(insert(group, "a"))
    waiting = asyncio.create_task(insert(group, "b"))
    await asyncio.sleep(0)  # "b" has written and waits for the COMMIT of the next round
    assert first.done()
    assert recorder.control("COMMIT") == ["COMMIT"]  # the group's COMMIT is still to come
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0)
    assert rows(path) == ["a", "b"]


async def test_a_unit_may_not_suspend_inside(path: Path, recorder: Recorder) -> None:
    group = CommitGroup(recorder.take, recorder.pool.give_back)
    release = asyncio.Event()

    async def suspends() -> None:
        async with group.unit():
            await release.wait()

    first = asyncio.create_task(suspends())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="must not await"):
        await insert(group, "b")
    release.set()
    await first
    assert rows(path) == []


async def test_a_group_cannot_be_committed_from_inside_one_of_its_units(path: Path, recorder: Recorder) -> None:
    """As when a unit's body starts another write of the process: a bug, refused, not a half commit."""
    group = CommitGroup(recorder.take, recorder.pool.give_back)

    async def flushes_inside() -> None:
        async with group.unit() as conn:
            conn.execute("INSERT INTO child VALUES ('b', 'p')")
            group.flush()

    results = await asyncio.gather(insert(group, "a"), flushes_inside(), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], RuntimeError)
    assert "flush() inside a group-commit unit" in str(results[1])
    assert rows(path) == ["a"]  # the refused unit was rolled back


# --- through Database ----------------------------------------------------------------------------


async def test_writes_of_every_kind_in_one_round_share_the_group(tenants: Tenants) -> None:
    """A turn's writes and a budget change made in the same round commit together, at once."""
    db = Database(tenants.database_url)
    try:
        org = Tenant.for_org(tenants.org_a)
        now = datetime.now(UTC)

        async def turn_write() -> None:
            async with db.unit(org) as tx:
                await repo.add_cost_usage(tx, tenants.org_a, totals=TOTALS, now=now)

        async def budget_write() -> None:
            async with db.unit(Tenant.system()) as tx:
                await repo.upsert_budget(tx, tenants.org_a, {"messages_per_hour_per_org": 7}, now=now)

        started = asyncio.get_running_loop().time()
        await asyncio.gather(turn_write(), turn_write(), budget_write())  # the last two are in a group
        assert asyncio.get_running_loop().time() - started < 5
        async with db.unit(org, readonly=True) as tx:
            budget = await repo.get_budget(tx, tenants.org_a)
            assert budget is not None
            assert budget["messages_per_hour_per_org"] == 7
            usage = await repo.cost_usage(tx, tenants.org_a, period="daily", key=period_keys(now)[0])
            assert usage is not None
            assert usage["output_tokens"] == 2 * TOTALS.output_tokens
    finally:
        await db.dispose()


async def test_dispose_commits_a_pending_group(tenants: Tenants) -> None:
    db = Database(tenants.database_url)
    org = Tenant.for_org(tenants.org_a)
    now = datetime.now(UTC)

    async def add_usage() -> None:
        async with db.unit(org) as tx:
            await repo.add_cost_usage(tx, tenants.org_a, totals=TOTALS, now=now)

    adding = [asyncio.create_task(add_usage()) for _ in range(2)]
    await asyncio.sleep(0)  # the second is written and waits for the COMMIT of the loop's next round
    assert [task.done() for task in adding] == [True, False]
    await db.dispose()  # in this round: commits the group before the connections close
    await asyncio.gather(*adding)
    reopened = Database(tenants.database_url)
    try:
        async with reopened.unit(org, readonly=True) as tx:
            usage = await repo.cost_usage(tx, tenants.org_a, period="monthly", key=period_keys(now)[1])
            assert usage is not None
            assert usage["input_tokens"] == 2 * TOTALS.input_tokens
    finally:
        await reopened.dispose()
