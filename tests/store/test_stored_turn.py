"""`parley_store_turn` (migration 0009, `store/stored_turn.py`): a plain turn stored in one
statement on PostgreSQL must write exactly what `_persist`'s transaction of statements writes, keep
the lease rule (released only if still the turn's), and stay under row-level security."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Boolean, String, column, func, select, table

from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.repositories import TurnTotals
from parley.store.stored_turn import store_turn
from parley.store.tenancy import Tenant
from tests.conftest import DatabaseUrls, Tenants, database_of_kind

NOW = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
TOTALS = TurnTotals(
    input_tokens=10, output_tokens=3, cache_read_tokens=2, cache_write_tokens=1, cost_cents=Decimal("0.123457")
)
PARTS = [{"type": "reasoning", "text": "r"}, {"type": "text", "text": "Hello 'there' \\ ünïcode"}]


@pytest.fixture
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    return database_of_kind(request, "postgres", data_dir)


async def _session_with_a_turn(db: Database, org_id: str, lease: str) -> tuple[str, str]:
    """A session whose turn holds `lease`, with its reply checkpointed and a reservation: (session, reservation)."""
    session_id = str(uuid.uuid4())
    async with db.unit(Tenant.for_org(org_id)) as tx:
        await repo.insert_session(
            tx,
            {
                "id": session_id,
                "org_id": org_id,
                "status": "active",
                "type": "general",
                "model": "m-1",
                "last_activity_at": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )
        expires = NOW + timedelta(seconds=60)
        assert await repo.take_turn(tx, session_id, token=lease, owner="h/1/x", now=NOW, expires_at=expires) == 1
        reservation = await repo.add_reservation(tx, org_id, session_id, Decimal(1), now=NOW, expires_at=expires)
        await repo.upsert_message(
            tx,
            message_id=lease,
            session_id=session_id,
            position=2,
            role="assistant",
            content="Hel",
            parts=[{"type": "text", "text": "Hel"}],
            created_at=NOW,
            keep_finished=True,
        )
    return session_id, reservation


def _stored(record: dict[str, Any] | None) -> dict[str, Any]:
    assert record is not None
    ignored = {"id", "session_id", "created_at"}
    return {key: value for key, value in record.items() if key not in ignored}


async def _rows(db: Database, org_id: str, session_id: str, lease: str) -> tuple[dict[str, Any], ...]:
    async with db.unit(Tenant.for_org(org_id), readonly=True) as tx:
        session = await repo.get_session(tx, Tenant.for_org(org_id), session_id)
        reply = await repo.get_message(tx, lease)
        reserved = await repo.reserved_cents(tx, org_id, now=NOW)
    return _stored(session) | {"reserved": reserved}, _stored(reply)


async def _cost_rows(db: Database, org_id: str) -> list[dict[str, Any]]:
    async with db.unit(Tenant.for_org(org_id), readonly=True) as tx:
        daily, monthly = repo.period_keys(NOW)
        found = [
            await repo.cost_usage(tx, org_id, period="daily", key=daily),
            await repo.cost_usage(tx, org_id, period="monthly", key=monthly),
        ]
    return [{k: v for k, v in row.items() if k not in ("id", "updated_at")} for row in found if row is not None]


async def _store_with_statements(db: Database, org_id: str, session_id: str, lease: str, reservation: str) -> None:
    """What `_persist` runs on SQLite and for turns with calls."""
    async with db.unit(Tenant.for_org(org_id)) as tx:
        await repo.delete_reservation(tx, reservation)
        await repo.record_turn(tx, session_id, totals=TOTALS, count_turn=True, now=NOW, lease_token=lease)
        await repo.upsert_message(
            tx,
            message_id=lease,
            session_id=session_id,
            position=2,
            role="assistant",
            content="Hello",
            parts=PARTS,
            tokens=(11, 4, 2, 1),
            cost_cents=Decimal("0.5"),
            usage_estimated=True,
            finish_reason="stop",
            created_at=NOW,
        )
        await repo.add_cost_usage(tx, org_id, totals=TOTALS, now=NOW, messages=1)


async def _store_in_one_statement(
    db: Database, org_id: str, session_id: str, lease: str, reservation: str | None, **overrides: Any
) -> None:
    arguments: dict[str, Any] = {
        "session_id": session_id,
        "lease_token": lease,
        "reservation_id": reservation,
        "release": True,
        "count_turn": True,
        "now": NOW,
        "totals": TOTALS,
        "position": 2,
        "content": "Hello",
        "parts": PARTS,
        "reply_tokens": (11, 4, 2, 1),
        "reply_cost_cents": Decimal("0.5"),
        "usage_estimated": True,
        "finish_reason": "stop",
        "cost_messages": 1,
    }
    await store_turn(db, org_id, **(arguments | overrides))


async def test_one_statement_writes_what_the_transaction_of_statements_writes(db: Database, tenants: Tenants) -> None:
    first, first_reservation = await _session_with_a_turn(db, tenants.org_a, "lease-1")
    second, second_reservation = await _session_with_a_turn(db, tenants.org_a, "lease-2")

    await _store_with_statements(db, tenants.org_a, first, "lease-1", first_reservation)
    once = await _cost_rows(db, tenants.org_a)
    await _store_in_one_statement(db, tenants.org_a, second, "lease-2", second_reservation)

    assert await _rows(db, tenants.org_a, second, "lease-2") == await _rows(db, tenants.org_a, first, "lease-1")
    session, reply = await _rows(db, tenants.org_a, second, "lease-2")
    assert (session["lease_token"], session["lease_owner"], session["turn_count"]) == (None, None, 1)
    assert session["total_cost_cents"] == Decimal("0.123457")
    assert session["reserved"] == 0
    assert (reply["content"], reply["content_parts"], reply["finish_reason"]) == ("Hello", PARTS, "stop")
    twice = await _cost_rows(db, tenants.org_a)
    assert [row["input_tokens"] for row in once] == [10, 10]
    assert [(row["input_tokens"], row["message_count"], row["total_cost_cents"]) for row in twice] == [
        (20, 2, Decimal("0.246914")),
        (20, 2, Decimal("0.246914")),
    ]


async def test_the_lease_goes_only_when_it_is_still_the_turns_and_the_turn_ends(db: Database, tenants: Tenants) -> None:
    session, _ = await _session_with_a_turn(db, tenants.org_a, "lease-1")
    # Between two model rounds: totals grow, the lease stays; no cost rows without cost_messages.
    await _store_in_one_statement(
        db,
        tenants.org_a,
        session,
        "lease-1",
        None,
        release=False,
        count_turn=False,
        finish_reason=None,
        cost_messages=None,
    )
    row, _ = await _rows(db, tenants.org_a, session, "lease-1")
    assert (row["lease_token"], row["turn_count"], row["total_input_tokens"]) == ("lease-1", 0, 10)
    assert await _cost_rows(db, tenants.org_a) == []
    # A turn whose lease was recovered under it is still billed, but leaves the new lease alone.
    await _store_in_one_statement(db, tenants.org_a, session, "another-turn", None)
    row, _ = await _rows(db, tenants.org_a, session, "lease-1")
    assert (row["lease_token"], row["turn_count"], row["total_input_tokens"]) == ("lease-1", 1, 20)


async def test_row_level_security_applies_inside_the_function(db: Database, tenants: Tenants) -> None:
    session, reservation = await _session_with_a_turn(db, tenants.org_a, "lease-1")
    before = await _rows(db, tenants.org_a, session, "lease-1")
    # Org B's tenant cannot see org A's session: the reply's insert fails its policy, and the whole
    # call (one transaction) leaves nothing, not even the reservation's delete or the session's totals.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await _store_in_one_statement(db, tenants.org_b, session, "lease-1", reservation)
    assert await _rows(db, tenants.org_a, session, "lease-1") == before
    assert await _cost_rows(db, tenants.org_b) == []


async def test_the_function_is_not_the_tables_owners(db: Database, tenants: Tenants) -> None:
    """SECURITY INVOKER: it runs as the application role, under its policies."""
    procs = table("pg_proc", column("proname", String), column("prosecdef", Boolean))
    definer = select(func.count()).where(procs.c.proname == "parley_store_turn", procs.c.prosecdef)
    async with db.unit(Tenant.system(), readonly=True) as tx:
        assert await tx.value(definer) == 0
