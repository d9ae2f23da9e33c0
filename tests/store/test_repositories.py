"""parley's data layer (store/repositories.py on store/sql.py) on every database it supports.

Rows written by parley must read back exactly through an independent reader (SQLAlchemy's ORM
over the same models), and rows written by that reader through parley: the same stored forms of
datetimes (with microseconds), money (a millionth of a cent), JSON; and the same tenancy.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.models import AiBudget, AiCostUsage, AiMessage, AiSession, User
from parley.store.repositories import TurnTotals
from parley.store.tenancy import Tenant
from tests.conftest import DatabaseUrls, Tenants, database_of_kind
from tests.support.inspect_db import in_db_async

NOW = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    return database_of_kind(request, request.param, data_dir)


async def _orm_session(db: Database, org_id: str, *, context: dict[str, object] | None) -> AiSession:
    async def work(s: AsyncSession) -> AiSession:
        user = (await s.execute(select(User).where(User.org_id == org_id))).scalars().first()
        assert user is not None
        row = AiSession(
            id=str(uuid.uuid4()),
            org_id=org_id,
            user_id=user.id,
            status="active",
            type="general",
            title=None,
            model="m-1",
            system_prompt="Be brief.",
            context_snapshot=context,
            total_input_tokens=0,
            total_output_tokens=0,
            total_cache_read_tokens=0,
            total_cache_write_tokens=0,
            total_cost_cents=Decimal(0),
            turn_count=0,
            message_count=0,
            max_turns=7,
            last_activity_at=NOW,
            created_at=NOW - timedelta(minutes=1),
            updated_at=NOW,
        )
        s.add(row)
        return row

    return await in_db_async(db.url, work)


async def test_a_session_written_by_the_orm_reads_back_the_same(db: Database, tenants: Tenants) -> None:
    orm = await _orm_session(db, tenants.org_a, context={"page": "Übersicht", "n": 1})
    async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
        row = await repo.session_for_turn(tx, orm.id)
    assert row is not None
    assert (row.id, row.org_id, row.user_id, row.status, row.model) == (
        orm.id,
        orm.org_id,
        orm.user_id,
        "active",
        "m-1",
    )
    assert (row.system_prompt, row.context_snapshot) == ("Be brief.", {"page": "Übersicht", "n": 1})
    assert (row.turn_count, row.max_turns, row.message_count, row.title) == (0, 7, 0, None)
    assert row.created_at == NOW - timedelta(minutes=1)
    assert row.last_activity_at == NOW  # microseconds and UTC kept


async def test_messages_usage_and_totals_written_by_parley_read_back_through_the_orm(
    db: Database, tenants: Tenants
) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    totals = TurnTotals(
        input_tokens=10, output_tokens=3, cache_read_tokens=2, cache_write_tokens=1, cost_cents=Decimal("0.000001")
    )
    async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
        stream = await repo.take_turn(
            tx,
            orm.id,
            token="lease-1",
            owner="host/1/a",
            now=NOW,
            expires_at=NOW + timedelta(seconds=60),
            title="Hi",
            context={"k": "v"},
        )
        assert stream == 1
        await repo.insert_message(
            tx,
            session_id=orm.id,
            position=1,
            role="user",
            content="Hi",
            parts=[{"type": "text", "text": "Hi"}],
            created_at=NOW,
        )
        await repo.insert_message(
            tx,
            message_id="reply-1",
            session_id=orm.id,
            position=2,
            role="assistant",
            content="Hello",
            parts=[{"type": "reasoning", "text": "r"}, {"type": "text", "text": "Hello"}],
            tokens=(10, 3, 2, 1),
            cost_cents=Decimal("1.2345678"),  # kept to a millionth of a cent
            usage_estimated=True,
            finish_reason="stop",
            created_at=NOW + timedelta(microseconds=1),
        )
        for _ in range(3):  # three turns add up exactly, with no float drift
            await repo.add_cost_usage(tx, tenants.org_a, totals=totals, now=NOW)
        await repo.record_turn(tx, orm.id, totals=totals, count_turn=True, now=NOW, lease_token="lease-1")

    async def read(s: AsyncSession) -> tuple[list[AiMessage], AiSession | None, AiCostUsage, AiCostUsage]:
        messages = list((await s.execute(select(AiMessage).order_by(AiMessage.position))).scalars())
        session = await s.get(AiSession, orm.id)
        daily = (await s.execute(select(AiCostUsage).where(AiCostUsage.period == "daily"))).scalars().one()
        monthly = (await s.execute(select(AiCostUsage).where(AiCostUsage.period == "monthly"))).scalars().one()
        return messages, session, daily, monthly

    messages, session, daily, monthly = await in_db_async(db.url, read)
    assert [(m.role, m.content, m.position) for m in messages] == [("user", "Hi", 1), ("assistant", "Hello", 2)]
    reply = messages[1]
    assert isinstance(reply, AiMessage)
    assert reply.id == "reply-1"
    assert reply.content_parts == [{"type": "reasoning", "text": "r"}, {"type": "text", "text": "Hello"}]
    assert (reply.input_tokens, reply.output_tokens, reply.cache_read_tokens, reply.cache_write_tokens) == (10, 3, 2, 1)
    assert reply.cost_cents == Decimal("1.234568")
    assert reply.usage_estimated is True
    assert reply.finish_reason == "stop"
    assert reply.created_at == NOW + timedelta(microseconds=1)
    assert session is not None
    assert (session.title, session.context_snapshot, session.message_count, session.turn_count) == (
        "Hi",
        {"k": "v"},
        2,
        1,
    )
    assert session.total_cost_cents == Decimal("0.000001")
    assert (session.lease_token, session.lease_expires_at) == (None, None)
    assert (daily.period_key, daily.input_tokens, daily.message_count) == ("2026-03-04", 30, 3)
    assert daily.total_cost_cents == Decimal("0.000003")
    assert (monthly.period_key, monthly.input_tokens, monthly.message_count) == ("2026-03", 30, 3)
    assert monthly.total_cost_cents == Decimal("0.000003")
    assert monthly.id != daily.id

    async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
        assert [r[:2] for r in await repo.history_rows(tx, orm.id)] == [("user", "Hi"), ("assistant", "Hello")]
        assert await repo.accepted_messages(tx, since=NOW - timedelta(seconds=1), org_id=tenants.org_a) == (1, NOW)
        assert await repo.accepted_messages(tx, since=NOW, org_id=tenants.org_a) == (0, None)
        assert await repo.accepted_messages(tx, since=NOW - timedelta(seconds=1), user_id=orm.user_id) == (1, NOW)
        daily_cents, monthly_cents, reserved = await repo.spend(tx, tenants.org_a, now=NOW)
    assert (daily_cents, monthly_cents, reserved) == (Decimal("0.000003"), Decimal("0.000003"), Decimal(0))


async def test_the_lease_is_exclusive_until_its_orphaned_turn_is_ended_and_only_its_holder_releases_it(
    db: Database, tenants: Tenants
) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    later = NOW + timedelta(seconds=61)
    zero = TurnTotals(input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, cost_cents=Decimal(0))
    org = Tenant.for_org(tenants.org_a)
    lease = {"now": NOW, "expires_at": NOW + timedelta(seconds=60)}
    async with db.unit(org) as tx:
        assert await repo.take_turn(tx, orm.id, token="first", owner="a/1/x", **lease) == 1
        assert await repo.take_turn(tx, orm.id, token="second", owner="b/2/y", **lease) is None
    async with db.unit(Tenant.system(), readonly=True) as tx:
        assert await repo.expired_leases(tx, now=NOW) == []
        (expired,) = await repo.expired_leases(tx, now=later)
        assert (expired.id, expired.lease_token, expired.lease_owner, expired.message_count) == (
            orm.id,
            "first",
            "a/1/x",
            2,
        )
        assert [held.id for held in await repo.leases_of_host(tx, "a/")] == [orm.id]
        assert await repo.leases_of_host(tx, "b/") == []
    async with db.unit(org) as tx:
        assert await repo.end_orphaned_turn(tx, expired, now=later)  # its reply is stored, empty, interrupted
        assert not await repo.end_orphaned_turn(tx, expired, now=later)  # only once
        assert await repo.take_turn(tx, orm.id, token="second", owner="b/2/y", now=later, expires_at=later) == 2
        # The first turn ends late: its totals count, but it cannot release the second's lease.
        await repo.record_turn(tx, orm.id, totals=zero, count_turn=True, now=later, lease_token="first")
        assert not await repo.release_lease(tx, orm.id, token="first")
    async with db.unit(org, readonly=True) as tx:
        row = await repo.get_session(tx, org, orm.id, owner_id=orm.user_id)
        replies = [m for m in await repo.list_messages(tx, orm.id) if m["id"] == "first"]
    assert row is not None
    assert (row["lease_token"], row["lease_owner"], row["stream_number"], row["turn_count"]) == (
        "second",
        "b/2/y",
        2,
        1,
    )
    assert [(m["role"], m["content"], m["position"], m["finish_reason"]) for m in replies] == [
        ("assistant", "", 2, "interrupted")
    ]


async def test_a_checkpointed_reply_is_kept_when_its_turn_is_orphaned(db: Database, tenants: Tenants) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    org = Tenant.for_org(tenants.org_a)
    reply = {"message_id": "r1", "session_id": orm.id, "position": 2, "role": "assistant", "created_at": NOW}
    async with db.unit(org) as tx:
        await repo.take_turn(tx, orm.id, token="r1", owner="a/1/x", now=NOW, expires_at=NOW + timedelta(seconds=5))
        await repo.upsert_message(tx, content="Once upon", parts=[{"type": "text", "text": "Once upon"}], **reply)
        await repo.upsert_message(tx, content="Once upon a time", parts=[], keep_finished=True, **reply)
        state = await repo.keep_turn(tx, orm.id, token="r1", expires_at=NOW + timedelta(seconds=10))
        assert state == ("active", None)
        assert await repo.request_stop(tx, orm.id, now=NOW) == ("r1", "a/1/x", NOW + timedelta(seconds=10))
        (held,) = await repo.turn_states(tx, [orm.id, "no-such-session"])
        assert held == (orm.id, "r1", "active", NOW)
        lease = await repo.held_lease(tx, orm.id)
        assert lease is not None
        assert await repo.end_orphaned_turn(tx, lease, now=NOW)
        # A checkpoint that arrives late never reopens a finished reply.
        await repo.upsert_message(tx, content="late", parts=[], keep_finished=True, **reply)
        assert await repo.keep_turn(tx, orm.id, token="r1", expires_at=NOW) is None  # the lease is gone
        (message,) = await repo.list_messages(tx, orm.id)
    assert (message["content"], message["finish_reason"]) == ("Once upon a time", "interrupted")


async def test_a_failed_unit_of_work_leaves_nothing_and_the_next_one_works(db: Database, tenants: Tenants) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)

    async def write_then_fail() -> None:
        async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
            await repo.insert_message(
                tx, session_id=orm.id, position=1, role="user", content="x", parts=[], created_at=NOW
            )
            raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        await write_then_fail()
    async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
        assert await repo.history_rows(tx, orm.id) == []
        reservation = await repo.add_reservation(
            tx, tenants.org_a, orm.id, Decimal("2.5"), now=NOW, expires_at=NOW + timedelta(minutes=5)
        )
        assert (await repo.spend(tx, tenants.org_a, now=NOW))[2] == Decimal("2.500000")
        await repo.delete_reservation(tx, reservation)
        assert (await repo.spend(tx, tenants.org_a, now=NOW))[2] == Decimal(0)


async def test_another_organizations_session_stays_out_of_reach(
    db: Database, tenants: Tenants, database: DatabaseUrls
) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    async with db.unit(Tenant.for_org(tenants.org_b)) as tx:
        row = await repo.session_for_turn(tx, orm.id)
        changed = await repo.set_status(tx, orm.id, "closed", now=NOW)
        listed, total = await repo.list_sessions(
            tx, Tenant.for_org(tenants.org_b), owner_id=orm.user_id or "", status=None, offset=0, limit=10
        )
    assert (listed, total) == ([], 0)  # the query's own filter, on both databases
    if database.kind == "postgres":  # row-level security hides it from org B's transaction
        assert row is None
        assert changed is False
    else:  # SQLite has no RLS: the caller's own org check is the guard (see SessionManager.send_message)
        assert row is not None
        assert row.org_id == tenants.org_a
        async with db.unit(Tenant.for_org(tenants.org_a)) as tx:
            await repo.set_status(tx, orm.id, "active", now=NOW)


async def test_a_tenant_of_several_organizations_lists_sessions_in_any_of_them(db: Database, tenants: Tenants) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    owner = orm.user_id or ""
    for orgs, expected in (({tenants.org_a, tenants.org_b}, [orm.id]), ({tenants.org_b}, [])):
        tenant = Tenant(scope="partner", org_ids=frozenset(orgs))
        async with db.unit(tenant, readonly=True) as tx:
            listed, total = await repo.list_sessions(tx, tenant, owner_id=owner, status=None, offset=0, limit=10)
            found = await repo.get_session(tx, tenant, orm.id, owner_id=owner)
        assert [row["id"] for row in listed] == expected
        assert total == len(expected)
        assert (found is not None) == bool(expected)


async def test_one_pooled_connection_carries_no_tenant_from_one_unit_to_the_next(
    tenants: Tenants, database: DatabaseUrls
) -> None:
    """Tenant settings are the transaction's own: a connection goes back to the pool without a reset
    round trip, and the next unit on it, for another tenant, sees nothing of the first's."""
    single = Database(tenants.database_url, pool_size=1)
    try:
        orm = await _orm_session(single, tenants.org_a, context=None)
        async with single.unit(Tenant.for_org(tenants.org_a)) as tx:
            assert await repo.get_session(tx, Tenant.for_org(tenants.org_a), orm.id) is not None
        async with single.unit(Tenant.for_org(tenants.org_b), readonly=True) as tx:
            seen = await repo.session_for_turn(tx, orm.id) if database.kind == "sqlite" else None
            if database.kind == "postgres":  # RLS: org B's transaction, on org A's former connection
                rows = await repo.list_sessions(
                    tx, Tenant.system(), owner_id=orm.user_id or "", status=None, offset=0, limit=10
                )
                assert rows == ([], 0)
        if database.kind == "sqlite":
            assert seen is not None  # no RLS on SQLite: parley's own filters guard it
        async with single.unit(Tenant.for_org(tenants.org_a)) as tx:  # the connection still works
            assert await repo.get_session(tx, Tenant.for_org(tenants.org_a), orm.id) is not None
    finally:
        await single.dispose()


async def test_the_session_and_its_budget_are_read_and_locked_together(db: Database, tenants: Tenants) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    org = Tenant.for_org(tenants.org_a)
    async with db.unit(org) as tx:
        row, budget = await repo.session_and_budget_for_turn(tx, orm.id)
        assert row is not None
        assert (row.id, budget) == (orm.id, None)  # no budget row: no limits
        assert await repo.session_and_budget_for_turn(tx, str(uuid.uuid4())) == (None, None)
        await repo.upsert_budget(tx, tenants.org_a, {"daily_budget_cents": Decimal(7)}, now=NOW)
    async with db.unit(org) as tx:
        row, budget = await repo.session_and_budget_for_turn(tx, orm.id)
        assert budget is not None
        assert (budget.enabled, budget.daily_budget_cents, budget.monthly_budget_cents) == (True, Decimal(7), None)
        if db.is_postgres:  # both rows stay locked until the unit ends
            sessions, budgets = AiSession.__table__, AiBudget.__table__
            for table, column, key in ((sessions, "id", orm.id), (budgets, "org_id", tenants.org_a)):
                probe = select(table.c[column]).where(table.c[column] == key).with_for_update(nowait=True)
                with pytest.raises(asyncpg.LockNotAvailableError):
                    async with db.unit(Tenant.system()) as other:
                        await other.rows(probe)


async def test_admitting_a_message_takes_the_lease_writes_the_message_and_its_event_and_reads_the_history_before_it(
    db: Database, tenants: Tenants
) -> None:
    orm = await _orm_session(db, tenants.org_a, context=None)
    org = Tenant.for_org(tenants.org_a)
    first_reply = {"session_id": orm.id, "position": 2, "role": "assistant", "created_at": NOW}

    def admission(token: str, position: int, text: str) -> dict[str, object]:
        return {
            "lease": {"token": token, "owner": "a/1/x", "now": NOW, "expires_at": NOW + timedelta(seconds=60)},
            "title": text if position == 1 else None,  # as admission names a session once
            "context": {"page": "/p"},
            "message": {
                "session_id": orm.id,
                "position": position,
                "role": "user",
                "content": text,
                "parts": [{"type": "text", "text": text}],
                "created_at": NOW,
            },
            "audit": {
                "created_at": NOW,
                "action": "message.send",
                "org_id": tenants.org_a,
                "actor_user_id": orm.user_id,
                "session_id": orm.id,
                "request_id": None,
                "client_ip": None,
                "user_agent": None,
                "detail": {"turn": token},
            },
        }

    async with db.unit(org) as tx:
        assert await repo.admit_message(tx, **admission("t1", 1, "Hi")) == (1, [])  # type: ignore[arg-type]
        # Held: no row comes back and nothing is written.
        assert await repo.admit_message(tx, **admission("t2", 3, "Again")) is None  # type: ignore[arg-type]
        await repo.upsert_message(
            tx, message_id="t1", content="Hello", parts=[{"type": "text", "text": "Hello"}], **first_reply
        )
        assert await repo.release_lease(tx, orm.id, token="t1")
        stream, history = await repo.admit_message(tx, **admission("t3", 3, "More")) or (0, [])  # type: ignore[arg-type]
    assert stream == 2
    assert [row[:2] for row in history] == [("user", "Hi"), ("assistant", "Hello")]  # not "More" itself

    async def stored(s: AsyncSession) -> tuple[list[tuple[int, str]], list[str], AiSession]:
        from parley.store.models import AiAuditEvent

        found = (await s.execute(select(AiMessage).where(AiMessage.session_id == orm.id))).scalars()
        events = (await s.execute(select(AiAuditEvent).where(AiAuditEvent.session_id == orm.id))).scalars()
        session = (await s.execute(select(AiSession).where(AiSession.id == orm.id))).scalar_one()
        return sorted((m.position, m.content) for m in found), sorted(e.detail["turn"] for e in events), session

    messages, turns, session = await in_db_async(db.url, stored)
    assert (session.title, session.message_count, session.lease_token) == ("Hi", 4, "t3")
    assert (session.context_snapshot, session.stream_number) == ({"page": "/p"}, 2)
    assert messages == [(1, "Hi"), (2, "Hello"), (3, "More")]  # the held attempt wrote nothing
    assert turns == ["t1", "t3"]
