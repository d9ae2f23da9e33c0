"""Queries, one function each; they run inside a unit of work and never commit.

Every read of tenant data takes the `Tenant` and filters by its organizations (system scope sees
all): the application's own guard, which PostgreSQL's row-level security doubles. Rows come back
detached-safe (`expire_on_commit=False`), so callers may use them after the transaction.
A turn's own reads and writes (admission, persistence) are plain SQL in `turn_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley.store.ids import new_id
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
from parley.store.turn_store import period_keys

__all__ = ["new_id", "period_keys"]  # re-exported: ids and period keys are the same everywhere


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


async def renew_lease(s: AsyncSession, session_id: str, *, token: str, expires_at: datetime) -> bool:
    result = await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id, AiSession.lease_token == token)
        .values(lease_expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def set_status(
    s: AsyncSession, session_id: str, status: str, *, now: datetime, only_if: str | None = None
) -> bool:
    stmt = update(AiSession).where(AiSession.id == session_id)
    if only_if is not None:
        stmt = stmt.where(AiSession.status == only_if)
    result = await s.execute(stmt.values(status=status, updated_at=now).execution_options(synchronize_session=False))
    return _rowcount(result) == 1


async def rename_session(s: AsyncSession, session_id: str, *, now: datetime, title: str) -> None:
    """A new title. Not activity: the chat keeps its place in the list and its idle deadline."""
    await s.execute(
        update(AiSession)
        .where(AiSession.id == session_id)
        .values(title=title, updated_at=now)
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


async def list_messages(s: AsyncSession, session_id: str) -> Sequence[AiMessage]:
    rows = await s.execute(
        select(AiMessage)
        .where(AiMessage.session_id == session_id)
        .order_by(AiMessage.position, AiMessage.created_at, AiMessage.id)
    )
    return list(rows.scalars())


# --- cost usage ----------------------------------------------------------------------------------


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
