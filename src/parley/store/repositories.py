"""Queries, one function each; they run inside a unit of work and never commit.

Every read of tenant data takes the `Tenant` and filters by its organizations (system scope sees
all): the application's own guard, which PostgreSQL's row-level security doubles. Rows come back
detached-safe (`expire_on_commit=False`), so callers may use them after the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import Select, Text, bindparam, case, cast, delete, func, insert, or_, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from parley.store.models import (
    AiBudget,
    AiBudgetReservation,
    AiCostUsage,
    AiMessage,
    AiSession,
    ApiToken,
    Organization,
    User,
)
from parley.store.tenancy import Tenant


def new_id() -> str:
    return str(uuid.uuid4())


def _scoped(stmt: Select[Any], tenant: Tenant, org_column: Any) -> Select[Any]:
    if tenant.sees_all:
        return stmt
    return stmt.where(org_column.in_(sorted(tenant.org_ids)))


# --- sessions ------------------------------------------------------------------------------------


@cache
def _get_session_statement(scoped: bool, owned: bool) -> Any:
    stmt = select(AiSession).where(AiSession.id == bindparam("p_session_id"))
    if scoped:
        stmt = stmt.where(AiSession.org_id.in_(bindparam("p_org_ids", expanding=True)))
    if owned:
        stmt = stmt.where(AiSession.user_id == bindparam("p_owner_id"))
    return stmt


async def get_session(
    s: AsyncSession, tenant: Tenant, session_id: str, *, owner_id: str | None = None
) -> AiSession | None:
    stmt = _get_session_statement(not tenant.sees_all, owner_id is not None)
    params: dict[str, Any] = {"p_session_id": session_id}
    if not tenant.sees_all:
        params["p_org_ids"] = sorted(tenant.org_ids)
    if owner_id is not None:
        params["p_owner_id"] = owner_id
    row: AiSession | None = (await s.execute(stmt, params)).scalar_one_or_none()
    return row


async def list_sessions(
    s: AsyncSession,
    tenant: Tenant,
    *,
    owner_id: str,
    status: str | None,
    offset: int,
    limit: int,
) -> tuple[Sequence[AiSession], int]:
    base = _scoped(select(AiSession).where(AiSession.user_id == owner_id), tenant, AiSession.org_id)
    if status is not None:
        base = base.where(AiSession.status == status)
    total = (await s.execute(select(func.count()).select_from(base.subquery()))).scalar_one()
    rows = (
        await s.execute(base.order_by(AiSession.last_activity_at.desc(), AiSession.id).offset(offset).limit(limit))
    ).scalars()
    return list(rows), int(total)


def _like_pattern(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_sessions(
    s: AsyncSession, tenant: Tenant, *, owner_id: str, q: str, limit: int
) -> list[tuple[AiSession, str | None]]:
    """Sessions whose title or user/assistant text matches `q` (case-insensitive), newest first."""
    pattern = _like_pattern(q)
    owned = _scoped(select(AiSession.id).where(AiSession.user_id == owner_id), tenant, AiSession.org_id)
    title_hits = (
        await s.execute(
            owned.add_columns(AiSession.last_activity_at)
            .where(func.lower(AiSession.title).like(pattern, escape="\\"))
            .order_by(AiSession.last_activity_at.desc())
            .limit(limit)
        )
    ).all()
    results: dict[str, str | None] = {row[0]: None for row in title_hits}
    if len(results) < limit:
        msg_hits = (
            await s.execute(
                select(AiMessage.session_id, AiMessage.content)
                .where(AiMessage.session_id.in_(owned.scalar_subquery()))
                .where(AiMessage.role.in_(("user", "assistant")))
                .where(func.lower(AiMessage.content).like(pattern, escape="\\"))
                .order_by(AiMessage.created_at.desc())
                .limit(limit * 5)
            )
        ).all()
        for sid, content in msg_hits:
            if sid not in results and len(results) < limit:
                results[sid] = content
    if not results:
        return []
    rows = (
        await s.execute(
            select(AiSession).where(AiSession.id.in_(list(results))).order_by(AiSession.last_activity_at.desc())
        )
    ).scalars()
    return [(row, results[row.id]) for row in rows]


@cache
def _acquire_lease_statement() -> Any:
    return (
        update(AiSession)
        .where(AiSession.id == bindparam("p_session_id"))
        .where(or_(AiSession.lease_token.is_(None), AiSession.lease_expires_at < bindparam("p_now")))
        .values(lease_token=bindparam("p_token"), lease_expires_at=bindparam("p_expires_at"))
        .execution_options(synchronize_session=False)
    )


async def acquire_lease(s: AsyncSession, session_id: str, *, token: str, now: datetime, expires_at: datetime) -> bool:
    """Take the turn lease if free or expired; atomic across processes (one conditional UPDATE)."""
    params = {"p_session_id": session_id, "p_now": now, "p_token": token, "p_expires_at": expires_at}
    result = await s.execute(_acquire_lease_statement(), params)
    return _rowcount(result) == 1


async def renew_lease(s: AsyncSession, session_id: str, *, token: str, expires_at: datetime) -> bool:
    result = await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id, AiSession.lease_token == token)
        .values(lease_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def release_lease(s: AsyncSession, session_id: str, *, token: str) -> None:
    await s.execute(_release_lease_statement(), {"p_session_id": session_id, "p_token": token})


async def set_status(
    s: AsyncSession, session_id: str, status: str, *, now: datetime, only_if: str | None = None
) -> bool:
    stmt = update(AiSession).where(AiSession.id == session_id)
    if only_if is not None:
        stmt = stmt.where(AiSession.status == only_if)
    result = await s.execute(stmt.values(status=status, updated_at=now).execution_options(synchronize_session=False))
    return _rowcount(result) == 1


@dataclass(frozen=True, slots=True)
class TurnTotals:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_cents: Decimal


@cache
def _record_turn_statement() -> Any:
    """Built once: constructing this UPDATE cost more CPU than running it (bound per call)."""
    return (
        update(AiSession)
        .where(AiSession.id == bindparam("p_session_id"))
        .values(
            total_input_tokens=AiSession.total_input_tokens + bindparam("p_input_tokens"),
            total_output_tokens=AiSession.total_output_tokens + bindparam("p_output_tokens"),
            total_cache_read_tokens=AiSession.total_cache_read_tokens + bindparam("p_cache_read_tokens"),
            total_cache_write_tokens=AiSession.total_cache_write_tokens + bindparam("p_cache_write_tokens"),
            total_cost_cents=AiSession.total_cost_cents + bindparam("p_cost_cents"),
            turn_count=AiSession.turn_count + bindparam("p_turns"),
            message_count=AiSession.message_count + bindparam("p_messages"),
            last_activity_at=bindparam("p_now"),
            updated_at=bindparam("p_now"),
        )
        .execution_options(synchronize_session=False)
    )


@cache
def _release_lease_statement() -> Any:
    return (
        update(AiSession)
        .where(AiSession.id == bindparam("p_session_id"), AiSession.lease_token == bindparam("p_token"))
        .values(lease_token=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


async def record_turn(
    s: AsyncSession,
    session_id: str,
    *,
    totals: TurnTotals,
    count_turn: bool,
    now: datetime,
    lease_token: str,
    messages_added: int = 0,
) -> None:
    """Add a turn's usage to its session, count the turn, and release the lease."""
    await s.execute(
        _record_turn_statement(),
        {
            "p_session_id": session_id,
            "p_input_tokens": totals.input_tokens,
            "p_output_tokens": totals.output_tokens,
            "p_cache_read_tokens": totals.cache_read_tokens,
            "p_cache_write_tokens": totals.cache_write_tokens,
            "p_cost_cents": totals.cost_cents,
            "p_turns": 1 if count_turn else 0,
            "p_messages": messages_added,
            "p_now": now,
        },
    )
    await release_lease(s, session_id, token=lease_token)


@cache
def _touch_statement() -> Any:
    return (
        update(AiSession)
        .where(AiSession.id == bindparam("p_session_id"))
        .values(
            last_activity_at=bindparam("p_now"),
            updated_at=bindparam("p_now"),
            message_count=AiSession.message_count + bindparam("p_messages"),
        )
        .execution_options(synchronize_session=False)
    )


async def touch_session(
    s: AsyncSession,
    session_id: str,
    *,
    now: datetime,
    title: str | None = None,
    context: dict[str, Any] | None = None,
    messages_added: int = 0,
) -> None:
    if title is None and context is None:  # the common shape: built once
        params = {"p_session_id": session_id, "p_now": now, "p_messages": messages_added}
        await s.execute(_touch_statement(), params)
        return
    values: dict[str, Any] = {"last_activity_at": now, "updated_at": now}
    if messages_added:
        values["message_count"] = AiSession.message_count + messages_added
    if title is not None:
        values["title"] = title
    if context is not None:
        values["context_snapshot"] = context
    await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def expire_stale_sessions(s: AsyncSession, *, now: datetime, idle_ttl: timedelta, max_age: timedelta) -> int:
    """Mark active sessions past their idle or age limit expired (not those mid-turn)."""
    result = await s.execute(
        update(AiSession)
        .where(AiSession.status == "active")
        .where((AiSession.last_activity_at < now - idle_ttl) | (AiSession.created_at < now - max_age))
        .where(AiSession.lease_token.is_(None) | (AiSession.lease_expires_at < now))
        .values(status="expired", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


# --- messages ------------------------------------------------------------------------------------


async def insert_message(s: AsyncSession, **fields: Any) -> None:
    """Insert a message row now (Core INSERT: no unit-of-work flush for a row nobody reads back)."""
    fields.setdefault("id", new_id())
    fields.setdefault("usage_estimated", False)
    await s.execute(_insert_message_statement(), fields)


@cache
def _insert_message_statement() -> Any:
    return insert(AiMessage)


async def count_user_messages(s: AsyncSession, session_id: str) -> int:
    result = await s.execute(
        select(func.count()).select_from(AiMessage).where(AiMessage.session_id == session_id, AiMessage.role == "user")
    )
    return int(result.scalar_one())


async def list_messages(s: AsyncSession, session_id: str) -> Sequence[AiMessage]:
    rows = await s.execute(
        select(AiMessage)
        .where(AiMessage.session_id == session_id)
        .order_by(AiMessage.position, AiMessage.created_at, AiMessage.id)
    )
    return list(rows.scalars())


@cache
def _history_statement(dialect: str) -> Any:
    # History needs a row's parts only to refuse tool parts: decode them only where the stored
    # JSON can hold one (a substring test in SQL, exact check in Python on the few that match).
    find = func.strpos if dialect == "postgresql" else func.instr
    maybe_tool = case((find(cast(AiMessage.content_parts, Text), '"tool_') > 0, AiMessage.content_parts))
    return (
        select(AiMessage.role, AiMessage.content, type_coerce(maybe_tool, AiMessage.content_parts.type))
        .where(AiMessage.session_id == bindparam("p_session_id"))
        .order_by(AiMessage.position, AiMessage.created_at, AiMessage.id)
    )


async def history_rows(s: AsyncSession, session_id: str) -> list[tuple[str, str | None, Any]]:
    """(role, content, content_parts) of a session in order: only the columns history needs.

    `content_parts` is None unless the stored parts may hold a tool part (see _history_statement).
    """
    rows = await s.execute(_history_statement(s.get_bind().dialect.name), {"p_session_id": session_id})
    return rows.all()  # type: ignore[return-value]  # Rows unpack like tuples


# --- cost usage ----------------------------------------------------------------------------------


def period_keys(now: datetime) -> tuple[str, str]:
    """(daily, monthly) keys in UTC."""
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


@cache
def _cost_usage_upsert(dialect: str) -> Any:
    """Built once per dialect (bound per call): building it, `excluded` above all, was most of
    the CPU a turn spent persisting."""
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert_fn(AiCostUsage).values(
        id=bindparam("id"),
        org_id=bindparam("org_id"),
        period=bindparam("period"),
        period_key=bindparam("period_key"),
        input_tokens=bindparam("input_tokens"),
        output_tokens=bindparam("output_tokens"),
        cache_read_tokens=bindparam("cache_read_tokens"),
        cache_write_tokens=bindparam("cache_write_tokens"),
        total_cost_cents=bindparam("total_cost_cents"),
        session_count=0,
        message_count=bindparam("message_count"),
        updated_at=bindparam("updated_at"),
    )
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=["org_id", "period", "period_key"],
        set_={
            "input_tokens": AiCostUsage.input_tokens + excluded.input_tokens,
            "output_tokens": AiCostUsage.output_tokens + excluded.output_tokens,
            "cache_read_tokens": AiCostUsage.cache_read_tokens + excluded.cache_read_tokens,
            "cache_write_tokens": AiCostUsage.cache_write_tokens + excluded.cache_write_tokens,
            "total_cost_cents": AiCostUsage.total_cost_cents + excluded.total_cost_cents,
            "message_count": AiCostUsage.message_count + excluded.message_count,
            "updated_at": excluded.updated_at,
        },
    )


async def add_cost_usage(s: AsyncSession, org_id: str, *, totals: TurnTotals, now: datetime, messages: int = 1) -> None:
    """Add to the organization's daily and monthly rows (upsert, so concurrent turns add up)."""
    daily, monthly = period_keys(now)
    stmt = _cost_usage_upsert(s.get_bind().dialect.name)
    for period, key in (("daily", daily), ("monthly", monthly)):
        await s.execute(
            stmt,
            {
                "id": new_id(),
                "org_id": org_id,
                "period": period,
                "period_key": key,
                "input_tokens": totals.input_tokens,
                "output_tokens": totals.output_tokens,
                "cache_read_tokens": totals.cache_read_tokens,
                "cache_write_tokens": totals.cache_write_tokens,
                "total_cost_cents": totals.cost_cents,
                "message_count": messages,
                "updated_at": now,
            },
        )


async def cost_usage(s: AsyncSession, tenant: Tenant, org_id: str, *, period: str, key: str) -> AiCostUsage | None:
    stmt = _scoped(
        select(AiCostUsage).where(
            AiCostUsage.org_id == org_id, AiCostUsage.period == period, AiCostUsage.period_key == key
        ),
        tenant,
        AiCostUsage.org_id,
    )
    row: AiCostUsage | None = (await s.execute(stmt)).scalar_one_or_none()
    return row


# --- tenants and tokens --------------------------------------------------------------------------


async def find_token(s: AsyncSession, token_hash: str) -> tuple[ApiToken, User] | None:
    row = (
        await s.execute(
            select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == token_hash)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def org_ids_of_partner(s: AsyncSession, partner_id: str) -> list[str]:
    rows = await s.execute(select(Organization.id).where(Organization.partner_id == partner_id))
    return [r[0] for r in rows]


async def find_organization(
    s: AsyncSession, *, name: str | None = None, org_id: str | None = None
) -> Organization | None:
    stmt = select(Organization)
    stmt = stmt.where(Organization.name == name) if name is not None else stmt.where(Organization.id == org_id)
    return (await s.execute(stmt)).scalar_one_or_none()


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# --- budgets, reservations, rate windows ---------------------------------------------------------


async def get_budget(s: AsyncSession, org_id: str, *, lock: bool = False) -> AiBudget | None:
    """The organization's budget row; `lock` serializes admissions of one organization (PostgreSQL
    row lock; SQLite writers are serialized by BEGIN IMMEDIATE already)."""
    stmt = _get_budget_statement(lock and s.get_bind().dialect.name == "postgresql")
    row: AiBudget | None = (await s.execute(stmt, {"p_org_id": org_id})).scalar_one_or_none()
    return row


@cache
def _get_budget_statement(for_update: bool) -> Any:
    stmt = select(AiBudget).where(AiBudget.org_id == bindparam("p_org_id"))
    return stmt.with_for_update() if for_update else stmt


async def upsert_budget(s: AsyncSession, org_id: str, values: dict[str, Any], *, now: datetime) -> AiBudget:
    row = await get_budget(s, org_id, lock=True)
    if row is None:
        row = AiBudget(id=new_id(), org_id=org_id, enabled=True, created_at=now, updated_at=now)
        s.add(row)
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = now
    await s.flush()
    return row


async def committed_and_reserved(s: AsyncSession, org_id: str, *, now: datetime) -> tuple[Decimal, Decimal, Decimal]:
    """(today's committed cents, this month's committed cents, outstanding reservations)."""
    daily_key, monthly_key = period_keys(now)
    rows = (
        await s.execute(
            select(AiCostUsage.period, AiCostUsage.total_cost_cents).where(
                AiCostUsage.org_id == org_id,
                or_(
                    (AiCostUsage.period == "daily") & (AiCostUsage.period_key == daily_key),
                    (AiCostUsage.period == "monthly") & (AiCostUsage.period_key == monthly_key),
                ),
            )
        )
    ).all()
    committed = {period: cents for period, cents in rows}
    reserved = await reserved_cents(s, org_id, now=now)
    return committed.get("daily", Decimal(0)), committed.get("monthly", Decimal(0)), reserved


async def reserved_cents(s: AsyncSession, org_id: str, *, now: datetime) -> Decimal:
    """The organization's outstanding (unexpired) reservations."""
    reserved = (
        await s.execute(
            select(func.coalesce(func.sum(AiBudgetReservation.amount_cents), 0)).where(
                AiBudgetReservation.org_id == org_id, AiBudgetReservation.expires_at > now
            )
        )
    ).scalar_one()
    return Decimal(reserved or 0)  # coalesce(sum()) keeps the Money type: already cents


async def add_reservation(
    s: AsyncSession, org_id: str, session_id: str, amount: Decimal, *, now: datetime, expires_at: datetime
) -> str:
    row = AiBudgetReservation(
        id=new_id(), org_id=org_id, session_id=session_id, amount_cents=amount, created_at=now, expires_at=expires_at
    )
    s.add(row)
    return row.id


async def delete_reservation(s: AsyncSession, reservation_id: str) -> None:
    await s.execute(delete(AiBudgetReservation).where(AiBudgetReservation.id == reservation_id))


async def accepted_messages(
    s: AsyncSession, *, since: datetime, user_id: str | None = None, org_id: str | None = None
) -> tuple[int, datetime | None]:
    """How many user messages were accepted since `since` (by a user or in an organization), and
    the oldest of them: a refused attempt stores no message, so it never counts."""
    stmt = (
        select(func.count(), func.min(AiMessage.created_at))
        .select_from(AiMessage)
        .join(AiSession, AiSession.id == AiMessage.session_id)
        .where(AiMessage.role == "user", AiMessage.created_at > since)
    )
    if user_id is not None:
        stmt = stmt.where(AiSession.user_id == user_id)
    if org_id is not None:
        stmt = stmt.where(AiSession.org_id == org_id)
    count, oldest = (await s.execute(stmt)).one()  # min() keeps the column type: aware UTC
    return int(count), oldest
