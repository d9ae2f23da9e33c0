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
from typing import Any

from sqlalchemy import Select, delete, func, or_, select, update
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


async def get_session(
    s: AsyncSession, tenant: Tenant, session_id: str, *, owner_id: str | None = None
) -> AiSession | None:
    stmt = _scoped(select(AiSession).where(AiSession.id == session_id), tenant, AiSession.org_id)
    if owner_id is not None:
        stmt = stmt.where(AiSession.user_id == owner_id)
    row: AiSession | None = (await s.execute(stmt)).scalar_one_or_none()
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


async def acquire_lease(s: AsyncSession, session_id: str, *, token: str, now: datetime, expires_at: datetime) -> bool:
    """Take the turn lease if free or expired; atomic across processes (one conditional UPDATE)."""
    result = await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id)
        .where(or_(AiSession.lease_token.is_(None), AiSession.lease_expires_at < now))
        .values(lease_token=token, lease_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
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
    await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id, AiSession.lease_token == token)
        .values(lease_token=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


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
    """Add a turn's usage to its session, count the turn, and release the lease, in one UPDATE."""
    await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id)
        .values(
            total_input_tokens=AiSession.total_input_tokens + totals.input_tokens,
            total_output_tokens=AiSession.total_output_tokens + totals.output_tokens,
            total_cache_read_tokens=AiSession.total_cache_read_tokens + totals.cache_read_tokens,
            total_cache_write_tokens=AiSession.total_cache_write_tokens + totals.cache_write_tokens,
            total_cost_cents=AiSession.total_cost_cents + totals.cost_cents,
            turn_count=AiSession.turn_count + (1 if count_turn else 0),
            message_count=AiSession.message_count + messages_added,
            last_activity_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    await release_lease(s, session_id, token=lease_token)


async def touch_session(
    s: AsyncSession,
    session_id: str,
    *,
    now: datetime,
    title: str | None = None,
    context: dict[str, Any] | None = None,
    messages_added: int = 0,
) -> None:
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


def add_message(s: AsyncSession, **fields: Any) -> AiMessage:
    """Stage a message row (id generated unless given); written when the unit of work commits."""
    fields.setdefault("id", new_id())
    fields.setdefault("usage_estimated", False)
    row = AiMessage(**fields)
    s.add(row)
    return row


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


async def history_rows(s: AsyncSession, session_id: str) -> list[tuple[str, str | None, Any]]:
    """(role, content, content_parts) of a session in order: only the columns history needs."""
    rows = await s.execute(
        select(AiMessage.role, AiMessage.content, AiMessage.content_parts)
        .where(AiMessage.session_id == session_id)
        .order_by(AiMessage.position, AiMessage.created_at, AiMessage.id)
    )
    return [(r[0], r[1], r[2]) for r in rows]


# --- cost usage ----------------------------------------------------------------------------------


def period_keys(now: datetime) -> tuple[str, str]:
    """(daily, monthly) keys in UTC."""
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


async def add_cost_usage(s: AsyncSession, org_id: str, *, totals: TurnTotals, now: datetime, messages: int = 1) -> None:
    """Add to the organization's daily and monthly rows (upsert, so concurrent turns add up)."""
    daily, monthly = period_keys(now)
    insert_fn = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    for period, key in (("daily", daily), ("monthly", monthly)):
        stmt = insert_fn(AiCostUsage).values(
            id=new_id(),
            org_id=org_id,
            period=period,
            period_key=key,
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            cache_read_tokens=totals.cache_read_tokens,
            cache_write_tokens=totals.cache_write_tokens,
            total_cost_cents=totals.cost_cents,
            session_count=0,
            message_count=messages,
            updated_at=now,
        )
        excluded = stmt.excluded
        await s.execute(
            stmt.on_conflict_do_update(
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
    stmt = select(AiBudget).where(AiBudget.org_id == org_id)
    if lock and s.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row: AiBudget | None = (await s.execute(stmt)).scalar_one_or_none()
    return row


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
    reserved = (
        await s.execute(
            select(func.coalesce(func.sum(AiBudgetReservation.amount_cents), 0)).where(
                AiBudgetReservation.org_id == org_id, AiBudgetReservation.expires_at > now
            )
        )
    ).scalar_one()
    reserved_cents = Decimal(reserved or 0)  # coalesce(sum()) keeps the Money type: already cents
    return committed.get("daily", Decimal(0)), committed.get("monthly", Decimal(0)), reserved_cents


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
