"""The server's WAL checkpoints run on their own thread (store/wal_checkpoint.py), not in a COMMIT."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from parley.store.db import Database
from parley.store.tenancy import Tenant
from parley.store.turn_store import TurnTotals
from tests.conftest import Tenants

TOTALS = TurnTotals(input_tokens=1, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0, cost_cents=Decimal(0))


def rows_in_the_database_file(path: Path, scratch: Path) -> int:
    """Cost rows in the main file alone: what checkpoints have copied out of the WAL."""
    shutil.copyfile(path, scratch)
    with sqlite3.connect(scratch) as conn:
        return int(conn.execute("SELECT count(*) FROM ai_cost_usage").fetchone()[0])


async def write_days(db: Database, org_id: str, days: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for day in range(days):  # one daily row per day, and the monthly rows
        async with db.turn_transaction(Tenant.for_org(org_id)) as tx:
            await tx.add_cost_usage(org_id, totals=TOTALS, now=start + timedelta(days=day))


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "parley-wal-checkpoint"]


async def test_the_server_database_checkpoints_on_its_own_thread(tenants: Tenants, tmp_path: Path) -> None:
    db = Database(tenants.database_url, background_checkpoints=True)
    path = Path(tenants.database_url.split("///", 1)[1])
    try:
        assert len(checkpoint_threads()) == 1
        async with db.transaction(Tenant.system(), readonly=True) as s:
            raw = await s.connection()
            assert (await raw.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
        await write_days(db, tenants.org_a, 40)
        written = 40 + 2  # 40 daily rows, January and February
        for _ in range(100):  # the thread copies them into the file within a few intervals
            if rows_in_the_database_file(path, tmp_path / "copy.db") == written:
                break
            await asyncio.sleep(0.05)
        assert rows_in_the_database_file(path, tmp_path / "copy.db") == written
    finally:
        await db.dispose()
    assert checkpoint_threads() == []  # dispose stops it


async def test_other_databases_keep_sqlites_own_checkpoints(tenants: Tenants) -> None:
    db = Database(tenants.database_url)  # as the CLI opens it
    try:
        assert checkpoint_threads() == []
        async with db.transaction(Tenant.system(), readonly=True) as s:
            raw = await s.connection()
            assert (await raw.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 1000
    finally:
        await db.dispose()
