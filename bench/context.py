"""Time to build a turn's context from a long stored session (1,000 and 10,000 messages).

Seeds a fresh SQLite database with SQL (one session, alternating user/assistant rows of realistic
length, inserted in one executemany per session), then times parley's path: the history query
(`repositories.history_rows` in a writing unit of work, as admission runs it) and
`chat.history.build_history`. The baseline, measured in the same run, is the floor for the same
rows: the standard library's sqlite3 fetching the same columns in the same order with no decoding.
Median of several runs after one warm-up.

    python -m bench.context [--sizes 1000,10000] [--runs 15]   ->   one JSON line

Imports parley's store and chat modules; runs in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, insert

from parley.chat.history import build_history
from parley.store import admin
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.ids import new_id
from parley.store.models import AiMessage, AiSession
from parley.store.tenancy import Tenant

USER_TEXT = "Could you explain how this part of the system behaves under load, with an example? " * 2
REPLY_TEXT = "Here is what happens, step by step, with the trade-offs spelled out as we go. " * 12


def _session_row(session_id: str, org_id: str, user_id: str, now: datetime, messages: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": session_id,
        "org_id": org_id,
        "user_id": user_id,
        "status": "active",
        "title": f"{messages} messages",
        "model": "bench-model",
        "system_prompt": "You are a helpful assistant.",
        "max_turns": 100_000,
        "turn_count": messages // 2,
        "last_activity_at": now,
        "created_at": now,
        "updated_at": now,
    }
    if "message_count" in AiSession.__table__.c:
        row["message_count"] = messages
    return row


def _message_rows(session_id: str, count: int, start: datetime) -> list[dict[str, Any]]:
    has_position = "position" in AiMessage.__table__.c
    rows = []
    for i in range(count):
        user = i % 2 == 0
        text = USER_TEXT if user else REPLY_TEXT
        row: dict[str, Any] = {
            "id": new_id(),
            "session_id": session_id,
            "role": "user" if user else "assistant",
            "content": text,
            "content_parts": [{"type": "text", "text": text}],
            "usage_estimated": False,
            "created_at": start + timedelta(milliseconds=i),
        }
        if not user:
            row.update(input_tokens=100, output_tokens=256, finish_reason="stop")
        if has_position:
            row["position"] = i + 1
        rows.append(row)
    return rows


async def _seed(url: str, sizes: list[int]) -> tuple[str, dict[int, str]]:
    db = await admin.open_database(url)
    try:
        org = await admin.create_organization(db, "context-bench")
        user = await admin.create_user(db, org_id=org, email="context@example.test", name="Context")
    finally:
        await db.dispose()
    sync_url = url.replace("sqlite+aiosqlite", "sqlite", 1)
    engine = create_engine(sync_url)
    now = datetime.now(UTC)
    sessions: dict[int, str] = {}
    with engine.begin() as conn:
        for size in sizes:
            sid = new_id()
            sessions[size] = sid
            conn.execute(insert(AiSession), [_session_row(sid, org, user, now, size)])
            conn.execute(insert(AiMessage), _message_rows(sid, size, now - timedelta(days=1)))
    engine.dispose()
    return org, sessions


async def _parley_path(db: Database, org_id: str, session_id: str) -> float:
    start = time.perf_counter()
    async with db.unit(Tenant.for_org(org_id)) as tx:  # a writing unit, as admission reads it
        rows = await repo.history_rows(tx, session_id)
    history = build_history(session_id, rows)
    elapsed = time.perf_counter() - start
    assert len(history) == len(rows)
    return elapsed


def _raw_fetch(path: Path, session_id: str) -> float:
    conn = sqlite3.connect(path)
    order = "position, created_at, id" if "position" in AiMessage.__table__.c else "created_at, id"
    start = time.perf_counter()
    rows = conn.execute(
        f"SELECT role, content, content_parts FROM ai_messages WHERE session_id = ? ORDER BY {order}",
        (session_id,),
    ).fetchall()
    elapsed = time.perf_counter() - start
    conn.close()
    assert rows
    return elapsed


async def measure(sizes: list[int], runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-context-") as tmp:
        path = Path(tmp) / "context.db"
        url = f"sqlite+aiosqlite:///{path}"
        org_id, sessions = await _seed(url, sizes)
        db = Database(url)
        out: dict[str, Any] = {}
        try:
            for size in sizes:
                sid = sessions[size]
                await _parley_path(db, org_id, sid)  # warm-up: connection, statement cache
                _raw_fetch(path, sid)
                parley = statistics.median([await _parley_path(db, org_id, sid) for _ in range(runs)])
                raw = statistics.median([_raw_fetch(path, sid) for _ in range(runs)])
                out[str(size)] = {"parley_ms": parley * 1000, "raw_ms": raw * 1000, "ratio": parley / raw}
        finally:
            await db.dispose()
    return out


def main() -> None:
    # Measure with the garbage collector set up as `parley serve` sets it up, if it does.
    from parley import server

    tune_gc = getattr(server, "tune_gc", None)
    if tune_gc is not None:
        tune_gc()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(orjson.dumps(asyncio.run(measure(sizes, args.runs))).decode(), flush=True)


if __name__ == "__main__":
    main()
