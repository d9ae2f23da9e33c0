"""Every query parley runs, one function each, as SQLAlchemy Core statements over the models' tables.

Functions take a `Tx` (`sql.py`) from `Database.unit(tenant)` and never commit. Statements are
module constants (or built once per shape), so each is compiled once per dialect. Reads of tenant
data filter by the `Tenant` (`in_orgs`), the application's own guard, which PostgreSQL's
row-level security doubles. Projections that the domain reads by attribute are dataclasses whose
fields are column names (`_columns`): the schema stays declared once, in `models.py`.

Imports: standard library, SQLAlchemy (statement building), parley.store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, NotRequired, TypedDict, Unpack

from sqlalchemy import (
    JSON,
    Column,
    Integer,
    Select,
    String,
    Table,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as insert_or_update
from sqlalchemy.sql.dml import Insert, ReturningUpdate
from sqlalchemy.sql.selectable import CTE

from parley.store.ids import new_id
from parley.store.models import (
    AiActionPlan,
    AiAuditEvent,
    AiBudget,
    AiBudgetReservation,
    AiCostUsage,
    AiMessage,
    AiSession,
    AiToolExecution,
    ApiToken,
    Organization,
    User,
)
from parley.store.sql import Record, Tx, member_of, utc_bucket
from parley.store.tenancy import Tenant, in_orgs
from parley.store.types import Money

sessions: Table = AiSession.__table__  # type: ignore[assignment]
messages: Table = AiMessage.__table__  # type: ignore[assignment]
cost_rows: Table = AiCostUsage.__table__  # type: ignore[assignment]
budgets: Table = AiBudget.__table__  # type: ignore[assignment]
reservations: Table = AiBudgetReservation.__table__  # type: ignore[assignment]
tokens: Table = ApiToken.__table__  # type: ignore[assignment]
users: Table = User.__table__  # type: ignore[assignment]
organizations: Table = Organization.__table__  # type: ignore[assignment]
executions: Table = AiToolExecution.__table__  # type: ignore[assignment]
plans: Table = AiActionPlan.__table__  # type: ignore[assignment]
audit_events: Table = AiAuditEvent.__table__  # type: ignore[assignment]


def _columns(record: type[Any], table: Table) -> list[Column[Any]]:
    """The columns a projection dataclass names, in its field order."""
    return [table.c[field.name] for field in dataclasses.fields(record)]


def period_keys(now: datetime) -> tuple[str, str]:
    """(daily, monthly) keys of the cost rows, in UTC."""
    day = now.date().isoformat()
    return day, day[:7]


# --- projections ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TurnSession:
    """The columns of a session that admitting a message needs."""

    id: str
    org_id: str
    user_id: str | None
    status: str
    title: str | None
    model: str
    system_prompt: str | None
    context_snapshot: dict[str, Any] | None
    turn_count: int
    max_turns: int
    message_count: int
    created_at: datetime
    last_activity_at: datetime
    lease_token: str | None
    lease_expires_at: datetime | None
    lease_owner: str | None
    awaiting_approval: str | None
    approvals_paused: bool
    allowed_tools: list[str] | None


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetLimits:
    """The columns of an organization's budget that admission checks."""

    enabled: bool
    daily_budget_cents: Decimal | None
    monthly_budget_cents: Decimal | None
    messages_per_minute_per_user: int | None
    messages_per_hour_per_org: int | None
    approval_mode: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class TurnTotals:
    """A turn's usage, added to its session and its organization's cost rows."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_cents: Decimal


HistoryRow = tuple[str, str | None, Any]  # (role, content, content_parts when they may hold a tool part)


# --- sessions -------------------------------------------------------------------------------------

# Locks the row on PostgreSQL: admissions of one session queue here, before anything is read that
# they write back (SQLite's writers are serialized by BEGIN IMMEDIATE already).
_SESSION_FOR_TURN = (
    select(*_columns(TurnSession, sessions)).where(sessions.c.id == bindparam("session_id")).with_for_update()
)


async def session_for_turn(tx: Tx, session_id: str) -> TurnSession | None:
    row = await tx.row(_SESSION_FOR_TURN, {"session_id": session_id})
    return None if row is None else TurnSession(*row)


def _session_and_budget_statement() -> Select[Any]:
    # The session's row locked first, then its organization's budget row (the order admission
    # always took them in): the CTE is the outer side of the lateral join.
    locked = _SESSION_FOR_TURN.cte("locked")
    budget = (
        select(*_columns(BudgetLimits, budgets))
        .where(budgets.c.org_id == locked.c.org_id)
        .with_for_update()
        .lateral("budget")
    )
    return select(locked, budget).select_from(locked.outerjoin(budget, true()))


_SESSION_AND_BUDGET_FOR_TURN = _session_and_budget_statement()
_TURN_SESSION_FIELDS = len(dataclasses.fields(TurnSession))


async def session_and_budget_for_turn(tx: Tx, session_id: str) -> tuple[TurnSession | None, BudgetLimits | None]:
    """The session's row and its organization's budget row (None when it has none), both locked on
    PostgreSQL: one statement there, one round trip."""
    if tx.dialect != "postgresql":
        found = await session_for_turn(tx, session_id)
        return found, None if found is None else await budget_limits(tx, found.org_id)
    row = await tx.row(_SESSION_AND_BUDGET_FOR_TURN, {"session_id": session_id})
    if row is None:
        return None, None
    session, budget = row[:_TURN_SESSION_FIELDS], row[_TURN_SESSION_FIELDS:]
    return TurnSession(*session), None if budget[0] is None else BudgetLimits(*budget)  # `enabled` is never NULL


def _take_lease(**more: Any) -> ReturningUpdate[int]:
    """Take a session's free turn lease and open its next event stream (returned); `more` sets
    what else taking it changes."""
    return (
        update(sessions)
        .where(sessions.c.id == bindparam("session_id"), sessions.c.lease_token.is_(None))
        .values(
            lease_token=bindparam("token"),
            lease_expires_at=bindparam("expires_at"),
            lease_owner=bindparam("owner"),
            stop_requested_at=None,
            stream_number=sessions.c.stream_number + 1,
            last_activity_at=bindparam("now"),
            updated_at=bindparam("now"),
            **more,
        )
        .returning(sessions.c.stream_number)
    )


_TAKE_TURN = _take_lease(
    # Two positions: the message admitted and the reply to it, stored even if empty, so the
    # conversation alternates whatever happens to the turn.
    message_count=sessions.c.message_count + 2,
    title=func.coalesce(bindparam("title", type_=String), sessions.c.title),
    context_snapshot=func.coalesce(bindparam("context", type_=JSON), sessions.c.context_snapshot),
)
_TAKE_CONTINUATION = _take_lease(awaiting_approval=None)


async def take_continuation(
    tx: Tx, session_id: str, *, token: str, owner: str, now: datetime, expires_at: datetime
) -> int | None:
    """Take the free turn lease to go on with the reply whose calls were decided (`token` is its
    id); the number of the continuation's event stream, or None when the lease is held."""
    params = {"session_id": session_id, "token": token, "owner": owner, "now": now, "expires_at": expires_at}
    return await tx.value(_TAKE_CONTINUATION, params)


async def take_turn(
    tx: Tx,
    session_id: str,
    *,
    token: str,
    owner: str,
    now: datetime,
    expires_at: datetime,
    title: str | None = None,
    context: dict[str, Any] | None = None,
) -> int | None:
    """Take the free turn lease for `owner` and record the message being admitted (activity,
    positions, title, context): one conditional UPDATE, atomic across processes. Returns the number
    of the turn's event stream, or None when the lease is held."""
    params = _take_turn_params(
        session_id, token=token, owner=owner, now=now, expires_at=expires_at, title=title, context=context
    )
    return await tx.value(_TAKE_TURN, params)


class LeaseFields(TypedDict):
    """Who takes a turn's lease, and until when (`take_turn`, `admit_message`)."""

    token: str
    owner: str
    now: datetime
    expires_at: datetime


def _take_turn_params(
    session_id: str,
    *,
    token: str,
    owner: str,
    now: datetime,
    expires_at: datetime,
    title: str | None,
    context: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "token": token,
        "owner": owner,
        "expires_at": expires_at,
        "now": now,
        "title": title,
        "context": context,
    }


_RELEASE_LEASE = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"), sessions.c.lease_token == bindparam("token"))
    .values(lease_token=None, lease_expires_at=None, lease_owner=None, stop_requested_at=None)
)


async def release_lease(tx: Tx, session_id: str, *, token: str) -> bool:
    """Release the lease if it is still `token`'s; False when it was not (another process took it)."""
    return await tx.run(_RELEASE_LEASE, {"session_id": session_id, "token": token}) == 1


_KEEP_TURN = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"), sessions.c.lease_token == bindparam("token"))
    .values(lease_expires_at=bindparam("expires_at"))
    .returning(sessions.c.status, sessions.c.stop_requested_at)
)


async def keep_turn(tx: Tx, session_id: str, *, token: str, expires_at: datetime) -> tuple[str, datetime | None] | None:
    """Renew a running turn's lease; returns (status, stop requested at), or None when the lease is
    no longer this turn's."""
    return await tx.row(_KEEP_TURN, {"session_id": session_id, "token": token, "expires_at": expires_at})


_TURN_STATES = select(sessions.c.id, sessions.c.lease_token, sessions.c.status, sessions.c.stop_requested_at).where(
    member_of(sessions.c.id, "session_ids")
)


async def turn_states(tx: Tx, session_ids: list[str]) -> list[tuple[str, str | None, str, datetime | None]]:
    """(id, lease token, status, stop requested at) of these sessions: what their running turns obey."""
    return await tx.rows(_TURN_STATES, {"session_ids": session_ids})


_REQUEST_STOP = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"), sessions.c.lease_token.is_not(None))
    .values(stop_requested_at=bindparam("now"))
    .returning(sessions.c.lease_token, sessions.c.lease_owner, sessions.c.lease_expires_at)
)


async def request_stop(tx: Tx, session_id: str, *, now: datetime) -> tuple[str, str | None, datetime | None] | None:
    """Raise the Stop flag of the running turn; its (lease token, owner, expiry), or None when no
    turn runs."""
    row = await tx.row(_REQUEST_STOP, {"session_id": session_id, "now": now})
    return None if row is None else (str(row[0]), row[1], row[2])


@dataclasses.dataclass(frozen=True, slots=True)
class HeldLease:
    """A session whose turn lease is held: which process holds it, and until when."""

    id: str
    org_id: str
    model: str
    lease_token: str
    lease_owner: str | None
    lease_expires_at: datetime | None
    message_count: int
    stream_number: int


_EXPIRED_LEASES = select(*_columns(HeldLease, sessions)).where(
    sessions.c.lease_token.is_not(None), sessions.c.lease_expires_at < bindparam("now")
)
_HELD_LEASES = select(*_columns(HeldLease, sessions)).where(sessions.c.lease_expires_at.is_not(None))
_LEASES_OF_HOST = select(*_columns(HeldLease, sessions)).where(
    sessions.c.lease_token.is_not(None), sessions.c.lease_owner.startswith(bindparam("host", type_=String))
)


async def expired_leases(tx: Tx, *, now: datetime) -> list[HeldLease]:
    return [HeldLease(*row) for row in await tx.rows(_EXPIRED_LEASES, {"now": now})]


async def held_leases(tx: Tx) -> list[HeldLease]:
    """Every held lease (each running turn of every process: the lease-expiry index finds them)."""
    return [HeldLease(*row) for row in await tx.rows(_HELD_LEASES)]


async def leases_of_host(tx: Tx, host_prefix: str) -> list[HeldLease]:
    """Held leases whose owner names start with `host_prefix` (this machine's processes)."""
    return [HeldLease(*row) for row in await tx.rows(_LEASES_OF_HOST, {"host": host_prefix})]


_HELD_LEASE = select(*_columns(HeldLease, sessions)).where(sessions.c.id == bindparam("session_id"))


async def held_lease(tx: Tx, session_id: str) -> HeldLease | None:
    """The session's lease, if one is held."""
    row = await tx.row(_HELD_LEASE, {"session_id": session_id})
    return None if row is None or row[3] is None else HeldLease(*row)


_END_ORPHAN = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"), sessions.c.lease_token == bindparam("token"))
    .values(
        lease_token=None,
        lease_expires_at=None,
        lease_owner=None,
        stop_requested_at=None,
        updated_at=bindparam("now"),
    )
)
_FINISH_ORPHAN_REPLY = (
    update(messages)
    .where(messages.c.id == bindparam("message_id"), messages.c.finish_reason.is_(None))
    .values(finish_reason="interrupted")
)
_DELETE_SESSION_RESERVATIONS = delete(reservations).where(reservations.c.session_id == bindparam("session_id"))


async def end_orphaned_turn(tx: Tx, lease: HeldLease, *, now: datetime) -> bool:
    """End a turn whose process died: release its lease, keep its reply as checkpointed (or store
    an empty one) marked interrupted, drop its reservation. False when the lease moved on."""
    if await tx.run(_END_ORPHAN, {"session_id": lease.id, "token": lease.lease_token, "now": now}) != 1:
        return False
    # The lease token is the reply's message id (see `sessions.py`): the checkpointed row, if any.
    if await tx.run(_FINISH_ORPHAN_REPLY, {"message_id": lease.lease_token}) == 0:
        await upsert_message(
            tx,
            message_id=lease.lease_token,
            session_id=lease.id,
            position=lease.message_count,
            role="assistant",
            content="",
            parts=[],
            created_at=now,
            finish_reason="interrupted",
            keep_finished=True,
        )
    await tx.run(_DELETE_SESSION_RESERVATIONS, {"session_id": lease.id})
    await fail_executing(tx, lease.lease_token, now=now)
    return True


_SET_STATUS = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"))
    .values(status=bindparam("status"), updated_at=bindparam("now"))
)
_SET_STATUS_IF = _SET_STATUS.where(sessions.c.status == bindparam("only_if"))


async def set_status(tx: Tx, session_id: str, status: str, *, now: datetime, only_if: str | None = None) -> bool:
    params = {"session_id": session_id, "status": status, "now": now, "only_if": only_if}
    return await tx.run(_SET_STATUS if only_if is None else _SET_STATUS_IF, params) == 1


_LEASE_IS_THIS_TURNS = sessions.c.lease_token == bindparam("token")
_TOTALS = {
    "total_input_tokens": sessions.c.total_input_tokens + bindparam("input_tokens"),
    "total_output_tokens": sessions.c.total_output_tokens + bindparam("output_tokens"),
    "total_cache_read_tokens": sessions.c.total_cache_read_tokens + bindparam("cache_read_tokens"),
    "total_cache_write_tokens": sessions.c.total_cache_write_tokens + bindparam("cache_write_tokens"),
    "total_cost_cents": sessions.c.total_cost_cents + bindparam("cost_cents", type_=sessions.c.total_cost_cents.type),
    "turn_count": sessions.c.turn_count + bindparam("turns"),
    "last_activity_at": bindparam("now"),
    "updated_at": bindparam("now"),
}
# Between two model rounds of a turn: the totals grow, the lease stays.
_RECORD_ROUND = update(sessions).where(sessions.c.id == bindparam("session_id")).values(_TOTALS)
_RECORD_TURN = _RECORD_ROUND.values(
    # The lease goes with it, if it is still this turn's (the right-hand sides all read the row as
    # it was, so the second CASE sees the old lease_token too).
    lease_expires_at=case((_LEASE_IS_THIS_TURNS, None), else_=sessions.c.lease_expires_at),
    lease_owner=case((_LEASE_IS_THIS_TURNS, None), else_=sessions.c.lease_owner),
    stop_requested_at=case((_LEASE_IS_THIS_TURNS, None), else_=sessions.c.stop_requested_at),
    lease_token=case((_LEASE_IS_THIS_TURNS, None), else_=sessions.c.lease_token),
)


async def record_turn(
    tx: Tx,
    session_id: str,
    *,
    totals: TurnTotals,
    count_turn: bool,
    now: datetime,
    lease_token: str,
    release: bool = True,
) -> None:
    """Add a turn's usage to its session, count the turn, and release the lease if it is still the
    turn's (a turn whose lease was recovered under it is still billed); `release=False` between
    two model rounds."""
    params = {
        "session_id": session_id,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "cost_cents": totals.cost_cents,
        "turns": 1 if count_turn else 0,
        "now": now,
        "token": lease_token,
    }
    await tx.run(_RECORD_TURN if release else _RECORD_ROUND, params)


_EXPIRE_STALE = (
    update(sessions)
    .where(
        sessions.c.status == "active",
        or_(
            # Past its age limit, even mid-turn (the turn then ends with the session).
            sessions.c.created_at < bindparam("born_before"),
            # Idle, and no turn running on any process.
            (sessions.c.last_activity_at < bindparam("idle_before"))
            & or_(sessions.c.lease_token.is_(None), sessions.c.lease_expires_at < bindparam("now")),
        ),
    )
    .values(status="expired", updated_at=bindparam("now"))
    .returning(sessions.c.id)
)


async def expire_stale_sessions(tx: Tx, *, now: datetime, idle_ttl: timedelta, max_age: timedelta) -> list[str]:
    """Mark active sessions past their age limit, or idle past theirs with no turn running on any
    process, expired, as stored; their ids."""
    params = {"now": now, "idle_before": now - idle_ttl, "born_before": now - max_age}
    return [sid for (sid,) in await tx.rows(_EXPIRE_STALE, params)]


@cache
def _session_statement(scoped: bool, owned: bool) -> Select[Any]:
    stmt = select(sessions).where(sessions.c.id == bindparam("session_id"))
    if scoped:
        stmt = stmt.where(in_orgs(sessions.c.org_id))
    if owned:
        stmt = stmt.where(sessions.c.user_id == bindparam("owner_id"))
    return stmt


async def get_session(tx: Tx, tenant: Tenant, session_id: str, *, owner_id: str | None = None) -> Record | None:
    """The whole session row, if the tenant sees it (and `owner_id` owns it)."""
    stmt = _session_statement(not tenant.sees_all, owner_id is not None)
    found = await tx.records(stmt, {"session_id": session_id, "owner_id": owner_id, **tenant.filter_params()})
    return found[0] if found else None


_INSERT_SESSION = insert(sessions)


async def insert_session(tx: Tx, values: Record) -> None:
    await tx.run(_INSERT_SESSION, values)


@cache
def _list_statements(scoped: bool, by_status: bool) -> tuple[Select[Any], Select[Any]]:
    where = [sessions.c.user_id == bindparam("owner_id")]
    if scoped:
        where.append(in_orgs(sessions.c.org_id))
    if by_status:
        where.append(sessions.c.status == bindparam("status"))
    rows = (
        select(sessions)
        .where(*where)
        .order_by(sessions.c.last_activity_at.desc(), sessions.c.id)
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )
    count = select(func.count()).select_from(sessions).where(*where)
    return rows, count


async def list_sessions(
    tx: Tx, tenant: Tenant, *, owner_id: str, status: str | None, offset: int, limit: int
) -> tuple[list[Record], int]:
    rows, count = _list_statements(not tenant.sees_all, status is not None)
    params = {"owner_id": owner_id, "status": status, "offset": offset, "limit": limit, **tenant.filter_params()}
    return await tx.records(rows, params), int(await tx.value(count, params) or 0)


def _like_pattern(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@cache
def _search_statements(scoped: bool) -> tuple[Select[str], Select[str, str | None]]:
    owned = [sessions.c.user_id == bindparam("owner_id")]
    if scoped:
        owned.append(in_orgs(sessions.c.org_id))
    pattern = bindparam("pattern", type_=String)
    by_title = (
        select(sessions.c.id)
        .where(*owned, func.lower(sessions.c.title).like(pattern, escape="\\"))
        .order_by(sessions.c.last_activity_at.desc())
        .limit(bindparam("limit"))
    )
    by_message = (
        select(messages.c.session_id, messages.c.content)
        .where(messages.c.session_id.in_(select(sessions.c.id).where(*owned).scalar_subquery()))
        .where(or_(messages.c.role == "user", messages.c.role == "assistant"))
        .where(func.lower(messages.c.content).like(pattern, escape="\\"))
        .order_by(messages.c.created_at.desc())
        .limit(bindparam("message_limit"))
    )
    return by_title, by_message


async def search_sessions(
    tx: Tx, tenant: Tenant, *, owner_id: str, q: str, limit: int
) -> list[tuple[Record, str | None]]:
    """Sessions whose title or user/assistant text matches `q` (case-insensitive), newest first."""
    by_title, by_message = _search_statements(not tenant.sees_all)
    params = {
        "owner_id": owner_id,
        "pattern": _like_pattern(q),
        "limit": limit,
        "message_limit": limit * 5,
        **tenant.filter_params(),
    }
    results: dict[str, str | None] = {sid: None for (sid,) in await tx.rows(by_title, params)}
    if len(results) < limit:
        for sid, content in await tx.rows(by_message, params):
            if sid not in results and len(results) < limit:
                results[sid] = content
    found = []
    for sid, content in results.items():
        row = await get_session(tx, tenant, sid, owner_id=owner_id)
        if row is not None:
            found.append((row, content))
    found.sort(key=lambda hit: hit[0]["last_activity_at"], reverse=True)
    return found


_RENAME = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"))
    .values(title=bindparam("title"), updated_at=bindparam("now"))
)


async def rename_session(tx: Tx, session_id: str, *, now: datetime, title: str) -> None:
    """A new title. Not activity: the chat keeps its place in the list and its idle deadline."""
    await tx.run(_RENAME, {"session_id": session_id, "title": title, "now": now})


# --- messages -------------------------------------------------------------------------------------

_ORDER = (messages.c.position, messages.c.created_at, messages.c.id)
_LIST_MESSAGES = select(messages).where(messages.c.session_id == bindparam("session_id")).order_by(*_ORDER)


async def list_messages(tx: Tx, session_id: str) -> list[Record]:
    return await tx.records(_LIST_MESSAGES, {"session_id": session_id})


# The parts are decoded only where the stored JSON may hold a tool part or a summary: a long history
# of plain text costs no JSON parsing.
_PARTS_TEXT = cast(messages.c.content_parts, Text)
_MAY_HOLD_TOOL = or_(
    _PARTS_TEXT.contains('"tool_', autoescape=True), _PARTS_TEXT.contains('"summary"', autoescape=True)
)
_HISTORY = (
    select(
        messages.c.role, messages.c.content, case((_MAY_HOLD_TOOL, messages.c.content_parts), else_=None).label("parts")
    )
    .where(messages.c.session_id == bindparam("session_id"))
    .order_by(*_ORDER)
)


async def history_rows(tx: Tx, session_id: str) -> Sequence[HistoryRow]:
    """(role, content, content_parts) of a session in order; `content_parts` is None unless it may
    hold a tool part or a summary. Read at admission, before the current message is written, so it
    excludes it."""
    return await tx.rows(_HISTORY, {"session_id": session_id})


_GET_MESSAGE = select(messages).where(messages.c.id == bindparam("message_id"))


async def get_message(tx: Tx, message_id: str) -> Record | None:
    found = await tx.records(_GET_MESSAGE, {"message_id": message_id})
    return found[0] if found else None


_CLOSE_REPLY = (
    update(messages)
    .where(messages.c.id == bindparam("message_id"))
    .values(content_parts=bindparam("parts", type_=JSON), finish_reason=bindparam("finish_reason"))
)
_REOPEN_REPLY = update(messages).where(messages.c.id == bindparam("message_id")).values(finish_reason=None)


async def close_reply(tx: Tx, message_id: str, *, parts: list[dict[str, Any]], finish_reason: str) -> None:
    """End a reply that will not go on, with its final parts."""
    await tx.run(_CLOSE_REPLY, {"message_id": message_id, "parts": parts, "finish_reason": finish_reason})


async def reopen_reply(tx: Tx, message_id: str) -> None:
    """A reply that goes on (its calls were decided): unfinished again, so it is checkpointed."""
    await tx.run(_REOPEN_REPLY, {"message_id": message_id})


_INSERT_MESSAGE = insert(messages)
_UPSERT_MESSAGE = insert_or_update(messages)
_REPLY_COLUMNS = (
    "content",
    "content_parts",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_cents",
    "usage_estimated",
    "finish_reason",
)
_UPSERT_REPLY = _UPSERT_MESSAGE.on_conflict_do_update(
    index_elements=[messages.c.id], set_={c: _UPSERT_MESSAGE.excluded[c] for c in _REPLY_COLUMNS}
)
# A checkpoint or a recovery never overwrites a reply that is already finished.
_UPSERT_UNFINISHED_REPLY = _UPSERT_MESSAGE.on_conflict_do_update(
    index_elements=[messages.c.id],
    set_={c: _UPSERT_MESSAGE.excluded[c] for c in _REPLY_COLUMNS},
    where=messages.c.finish_reason.is_(None),
)


class MessageFields(TypedDict):
    """The columns of a message that `insert_message` and `upsert_message` write."""

    session_id: str
    position: int
    role: str
    content: str
    parts: list[dict[str, Any]]
    created_at: datetime
    tokens: NotRequired[tuple[int, int, int, int] | None]  # input, output, cache read, cache write
    cost_cents: NotRequired[Decimal | None]
    usage_estimated: NotRequired[bool]
    finish_reason: NotRequired[str | None]


def _message_params(message_id: str, fields: MessageFields) -> dict[str, Any]:
    input_tokens, output_tokens, cache_read, cache_write = fields.get("tokens") or (None, None, None, None)
    return {
        "id": message_id,
        "session_id": fields["session_id"],
        "position": fields["position"],
        "role": fields["role"],
        "content": fields["content"],
        "content_parts": fields["parts"],
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "cost_cents": fields.get("cost_cents"),
        "usage_estimated": fields.get("usage_estimated", False),
        "finish_reason": fields.get("finish_reason"),
        "created_at": fields["created_at"],
    }


async def insert_message(
    tx: Tx, *, message_id: str | None = None, audit: Record | None = None, **fields: Unpack[MessageFields]
) -> None:
    """Insert a message; with `audit` (an `ai_audit_events` row), that event too: on PostgreSQL
    in the same statement, one round trip."""
    params = _message_params(message_id or new_id(), fields)
    if audit is None:
        await tx.run(_INSERT_MESSAGE, params)
    elif tx.dialect == "postgresql":
        await tx.run(_INSERT_MESSAGE_AND_AUDIT, params | _prefixed("audit_", audit))
    else:
        await tx.run(_INSERT_MESSAGE, params)
        await tx.run(_INSERT_AUDIT, audit)


async def upsert_message(
    tx: Tx, *, message_id: str, keep_finished: bool = False, **fields: Unpack[MessageFields]
) -> None:
    """Write a reply by its id: a checkpoint (no finish reason yet), or the final version over it.
    `keep_finished` leaves a reply that already has a finish reason as it is."""
    await tx.run(_UPSERT_UNFINISHED_REPLY if keep_finished else _UPSERT_REPLY, _message_params(message_id, fields))


def _accepted_since(scope_column: Column[Any]) -> Select[int, datetime | None]:
    return (
        select(func.count(), func.min(messages.c.created_at))
        .select_from(messages.join(sessions, sessions.c.id == messages.c.session_id))
        .where(messages.c.role == "user", messages.c.created_at > bindparam("since"), scope_column == bindparam("who"))
    )


_ACCEPTED_BY_USER = _accepted_since(sessions.c.user_id)
_ACCEPTED_IN_ORG = _accepted_since(sessions.c.org_id)


async def accepted_messages(
    tx: Tx, *, since: datetime, user_id: str | None = None, org_id: str | None = None
) -> tuple[int, datetime | None]:
    """How many user messages were accepted since `since` by a user (or in an organization), and
    the oldest of them: a refused attempt stores no message, so it never counts."""
    stmt, who = (_ACCEPTED_BY_USER, user_id) if user_id is not None else (_ACCEPTED_IN_ORG, org_id)
    row = await tx.row(stmt, {"since": since, "who": who})
    return (0, None) if row is None else (int(row[0]), row[1])


# --- budgets, reservations, cost --------------------------------------------------------------------

# Locks the budget row on PostgreSQL: admissions of one organization queue here, so parallel turns
# cannot pass the budget together.
_BUDGET_FOR_ADMISSION = (
    select(*_columns(BudgetLimits, budgets)).where(budgets.c.org_id == bindparam("org_id")).with_for_update()
)


async def budget_limits(tx: Tx, org_id: str) -> BudgetLimits | None:
    row = await tx.row(_BUDGET_FOR_ADMISSION, {"org_id": org_id})
    return None if row is None else BudgetLimits(*row)


_GET_BUDGET = select(budgets).where(budgets.c.org_id == bindparam("org_id"))


async def get_budget(tx: Tx, org_id: str) -> Record | None:
    found = await tx.records(_GET_BUDGET, {"org_id": org_id})
    return found[0] if found else None


_UPSERT_BUDGET_KEYS = ("id", "org_id", "enabled", "created_at", "updated_at")


@cache
def _upsert_budget_statement(fields: tuple[str, ...]) -> Any:
    stmt = insert_or_update(budgets).values({key: bindparam(key) for key in (*_UPSERT_BUDGET_KEYS, *fields)})
    changes = {field: stmt.excluded[field] for field in fields if field != "enabled"}
    if "enabled" in fields:
        changes["enabled"] = stmt.excluded.enabled
    return stmt.on_conflict_do_update(
        index_elements=[budgets.c.org_id], set_={**changes, "updated_at": stmt.excluded.updated_at}
    )


async def upsert_budget(tx: Tx, org_id: str, values: dict[str, Any], *, now: datetime) -> None:
    """Set the given fields of an organization's budget (a new row gets defaults for the others)."""
    fields = tuple(sorted(values))
    params = {"id": new_id(), "org_id": org_id, "enabled": True, "created_at": now, "updated_at": now, **values}
    await tx.run(_upsert_budget_statement(fields), params)


_RESERVED = select(func.coalesce(func.sum(reservations.c.amount_cents), 0)).where(
    reservations.c.org_id == bindparam("org_id"), reservations.c.expires_at > bindparam("now")
)


async def reserved_cents(tx: Tx, org_id: str, *, now: datetime) -> Decimal:
    """The organization's outstanding (unexpired) reservations."""
    value = await tx.value(_RESERVED, {"org_id": org_id, "now": now})
    return Decimal(value or 0)  # coalesce(sum()) keeps the Money type: already cents


def _committed(period: str) -> Any:
    return (
        select(cost_rows.c.total_cost_cents)
        .where(
            cost_rows.c.org_id == bindparam("org_id"),
            cost_rows.c.period == period,
            cost_rows.c.period_key == bindparam(period),
        )
        .scalar_subquery()
    )


# One statement, so one snapshot: a turn stored meanwhile (its reservation deleted, its cost added,
# in one transaction) is counted once, never neither (two statements could see neither).
_SPEND = select(
    func.coalesce(_committed("daily"), 0, type_=Money()),
    func.coalesce(_committed("monthly"), 0, type_=Money()),
    _RESERVED.scalar_subquery(),
)


async def spend(tx: Tx, org_id: str, *, now: datetime) -> tuple[Decimal, Decimal, Decimal]:
    """(today's committed cents, this month's committed cents, outstanding reservations)."""
    daily_key, monthly_key = period_keys(now)
    found = await tx.row(_SPEND, {"org_id": org_id, "daily": daily_key, "monthly": monthly_key, "now": now})
    assert found is not None
    daily, monthly, reserved = found
    return Decimal(daily), Decimal(monthly), Decimal(reserved or 0)


_INSERT_RESERVATION = insert(reservations)
_DELETE_RESERVATION = delete(reservations).where(reservations.c.id == bindparam("reservation_id"))


async def add_reservation(
    tx: Tx, org_id: str, session_id: str, amount: Decimal, *, now: datetime, expires_at: datetime
) -> str:
    reservation_id = new_id()
    params = {
        "id": reservation_id,
        "org_id": org_id,
        "session_id": session_id,
        "amount_cents": amount,
        "created_at": now,
        "expires_at": expires_at,
    }
    await tx.run(_INSERT_RESERVATION, params)
    return reservation_id


async def delete_reservation(tx: Tx, reservation_id: str) -> None:
    await tx.run(_DELETE_RESERVATION, {"reservation_id": reservation_id})


def _cost_row(period: str) -> dict[str, Any]:
    # Multi-row VALUES give their parameters no type: each is typed from its column here.
    names = {
        "id": f"{period}_id",
        "org_id": "org_id",
        "period_key": period,
        "input_tokens": "input_tokens",
        "output_tokens": "output_tokens",
        "cache_read_tokens": "cache_read_tokens",
        "cache_write_tokens": "cache_write_tokens",
        "total_cost_cents": "cost_cents",
        "message_count": "messages",
        "updated_at": "now",
    }
    row: dict[str, Any] = {column: bindparam(name, type_=cost_rows.c[column].type) for column, name in names.items()}
    return {**row, "period": period, "session_count": 0}


def _add_cost_statement() -> Any:
    # The day's row and the month's, in one statement (two rows, never the same one).
    stmt = insert_or_update(cost_rows).values([_cost_row("daily"), _cost_row("monthly")])
    added = (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "total_cost_cents",
        "message_count",
    )
    return stmt.on_conflict_do_update(
        index_elements=[cost_rows.c.org_id, cost_rows.c.period, cost_rows.c.period_key],
        set_={**{c: cost_rows.c[c] + stmt.excluded[c] for c in added}, "updated_at": stmt.excluded.updated_at},
    )


_ADD_COST = _add_cost_statement()


async def add_cost_usage(tx: Tx, org_id: str, *, totals: TurnTotals, now: datetime, messages: int = 1) -> None:
    """Add to the organization's daily and monthly rows (upsert, so concurrent turns add up)."""
    daily, monthly = period_keys(now)
    params = {
        "daily_id": new_id(),
        "daily": daily,
        "monthly_id": new_id(),
        "monthly": monthly,
        "org_id": org_id,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "cost_cents": totals.cost_cents,
        "messages": messages,
        "now": now,
    }
    await tx.run(_ADD_COST, params)


_COST_ROW = select(cost_rows).where(
    cost_rows.c.org_id == bindparam("org_id"),
    cost_rows.c.period == bindparam("period"),
    cost_rows.c.period_key == bindparam("key"),
)


async def cost_usage(tx: Tx, org_id: str, *, period: str, key: str) -> Record | None:
    found = await tx.records(_COST_ROW, {"org_id": org_id, "period": period, "key": key})
    return found[0] if found else None


# --- tool calls and plans --------------------------------------------------------------------------

_EXECUTION_DEFAULTS = {
    "server": None,
    "input": None,
    "description": None,
    "requires_approval": False,
    "decided_by": None,
    "decided_at": None,
    "decision_reason": None,
    "expires_at": None,
    "output": None,
    "is_error": False,
    "truncated": False,
    "error_message": None,
    "duration_ms": None,
    "plan_id": None,
    "plan_step": None,
    "started_at": None,
    "completed_at": None,
}
_INSERT_EXECUTION = insert(executions)


async def _insert_session_rows(
    tx: Tx, statement: Any, defaults: dict[str, Any], org_id: str, session_id: str, rows: Sequence[dict[str, Any]]
) -> None:
    if rows:
        await tx.run_many(statement, [{**defaults, **row, "org_id": org_id, "session_id": session_id} for row in rows])


async def insert_executions(tx: Tx, org_id: str, session_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Store calls as the turn first sees them (see `AiToolExecution` for their statuses)."""
    await _insert_session_rows(tx, _INSERT_EXECUTION, _EXECUTION_DEFAULTS, org_id, session_id, rows)


_START_EXECUTIONS = (
    update(executions)
    .where(member_of(executions.c.id, "ids"), executions.c.status == "approved")
    .values(status="executing", started_at=bindparam("now"))
)


async def start_executions(tx: Tx, execution_ids: Sequence[str], *, now: datetime) -> int:
    """Approved calls become `executing` (committed before any of them runs); how many did."""
    if not execution_ids:
        return 0
    return await tx.run(_START_EXECUTIONS, {"ids": list(execution_ids), "now": now})


@cache
def _update_execution_statement(fields: tuple[str, ...]) -> Any:
    return (
        update(executions)
        .where(executions.c.id == bindparam("execution_id"))
        .values({field: bindparam(field) for field in fields})
    )


async def update_execution(tx: Tx, execution_id: str, changes: dict[str, Any]) -> None:
    fields = tuple(sorted(changes))
    await tx.run(_update_execution_statement(fields), {"execution_id": execution_id, **changes})


_DECIDE = (
    update(executions)
    .where(
        executions.c.id == bindparam("execution_id"),
        executions.c.session_id == bindparam("session_id"),
        executions.c.status == "pending",
        executions.c.expires_at > bindparam("now"),
    )
    .values(
        status=bindparam("status"),
        decided_by=bindparam("user_id"),
        decided_at=bindparam("now"),
        decision_reason=bindparam("reason"),
    )
)


async def decide_execution(
    tx: Tx, session_id: str, execution_id: str, *, approved: bool, user_id: str, reason: str | None, now: datetime
) -> bool:
    """Approve or deny a pending, unexpired call: one conditional UPDATE, so a decision happens
    once whatever races it. False when the call is not pending (decided, expired, or unknown)."""
    params = {
        "execution_id": execution_id,
        "session_id": session_id,
        "status": "approved" if approved else "denied",
        "user_id": user_id,
        "reason": reason,
        "now": now,
    }
    return await tx.run(_DECIDE, params) == 1


_EXECUTION = select(executions).where(
    executions.c.id == bindparam("execution_id"), executions.c.session_id == bindparam("session_id")
)


async def get_execution(tx: Tx, session_id: str, execution_id: str) -> Record | None:
    found = await tx.records(_EXECUTION, {"execution_id": execution_id, "session_id": session_id})
    return found[0] if found else None


_REPLY_EXECUTIONS = (
    select(executions)
    .where(executions.c.message_id == bindparam("message_id"))
    .order_by(executions.c.round, executions.c.call_index)
)


async def reply_executions(tx: Tx, message_id: str) -> list[Record]:
    """Every call of a reply, round by round, in call order."""
    return await tx.records(_REPLY_EXECUTIONS, {"message_id": message_id})


_SESSION_EXECUTIONS = (
    select(executions)
    .where(executions.c.session_id == bindparam("session_id"))
    .order_by(executions.c.created_at, executions.c.round, executions.c.call_index)
    .limit(bindparam("limit"))
)


async def session_executions(tx: Tx, session_id: str, *, limit: int = 500) -> list[Record]:
    """The session's tool calls, oldest first."""
    return await tx.records(_SESSION_EXECUTIONS, {"session_id": session_id, "limit": limit})


_PENDING_EXECUTIONS = (
    select(executions)
    .where(executions.c.session_id == bindparam("session_id"), executions.c.status == "pending")
    .order_by(executions.c.created_at, executions.c.call_index)
)


async def pending_executions(tx: Tx, session_id: str) -> list[Record]:
    """The session's calls that wait for a decision (expired ones included until swept)."""
    return await tx.records(_PENDING_EXECUTIONS, {"session_id": session_id})


_EXPIRE_PENDING = (
    update(executions)
    .where(executions.c.status == "pending", executions.c.expires_at <= bindparam("now"))
    .values(status="expired", completed_at=bindparam("now"))
)
_EXPIRE_PENDING_OF_REPLY = _EXPIRE_PENDING.where(executions.c.message_id == bindparam("message_id"))


async def expire_pending(tx: Tx, *, now: datetime, message_id: str | None = None) -> int:
    """Pending calls past their deadline become `expired` (all of them, or one reply's)."""
    if message_id is None:
        return await tx.run(_EXPIRE_PENDING, {"now": now})
    return await tx.run(_EXPIRE_PENDING_OF_REPLY, {"now": now, "message_id": message_id})


_FAIL_EXECUTING = (
    update(executions)
    .where(executions.c.message_id == bindparam("message_id"), executions.c.status == "executing")
    .values(
        status="failed",
        is_error=True,
        error_message="The server stopped while this call ran: its outcome is unknown. It was not retried.",
        completed_at=bindparam("now"),
    )
)


async def fail_executing(tx: Tx, message_id: str, *, now: datetime) -> int:
    """Calls of a reply found `executing` after its process died: failed, outcome unknown."""
    return await tx.run(_FAIL_EXECUTING, {"message_id": message_id, "now": now})


_SET_AWAITING = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"))
    .values(awaiting_approval=bindparam("message_id", type_=String))
)


async def set_awaiting(tx: Tx, session_id: str, message_id: str | None) -> None:
    """Mark the reply whose calls wait for a decision (None: nothing waits)."""
    await tx.run(_SET_AWAITING, {"session_id": session_id, "message_id": message_id})


_SET_APPROVAL_STATE = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"))
    .values(
        approvals_paused=func.coalesce(
            bindparam("paused", type_=sessions.c.approvals_paused.type), sessions.c.approvals_paused
        ),
        allowed_tools=func.coalesce(bindparam("allowed", type_=JSON), sessions.c.allowed_tools),
        updated_at=bindparam("now"),
    )
)


async def set_approval_state(
    tx: Tx, session_id: str, *, now: datetime, paused: bool | None = None, allowed_tools: list[str] | None = None
) -> None:
    """Change the session's pause or its always-allowed tools (None: unchanged)."""
    await tx.run(
        _SET_APPROVAL_STATE, {"session_id": session_id, "paused": paused, "allowed": allowed_tools, "now": now}
    )


_PLAN_DEFAULTS = {"decided_by": None, "decided_at": None, "completed_at": None}
_INSERT_PLAN = insert(plans)


async def insert_plans(tx: Tx, org_id: str, session_id: str, rows: Sequence[dict[str, Any]]) -> None:
    await _insert_session_rows(tx, _INSERT_PLAN, _PLAN_DEFAULTS, org_id, session_id, rows)


_SESSION_PLANS = (
    select(plans)
    .where(plans.c.session_id == bindparam("session_id"), member_of(plans.c.status, "statuses"))
    .order_by(plans.c.created_at.desc())
)


async def session_plans(tx: Tx, session_id: str, statuses: Sequence[str]) -> list[Record]:
    """The session's plans in these statuses, newest first."""
    return await tx.records(_SESSION_PLANS, {"session_id": session_id, "statuses": list(statuses)})


_PLAN_OF_EXECUTION = select(plans).where(plans.c.execution_id == bindparam("execution_id"))


async def plan_of_execution(tx: Tx, execution_id: str) -> Record | None:
    found = await tx.records(_PLAN_OF_EXECUTION, {"execution_id": execution_id})
    return found[0] if found else None


@cache
def _update_plan_statement(fields: tuple[str, ...], only_if: bool) -> Any:
    stmt = update(plans).where(plans.c.id == bindparam("plan_id")).values({f: bindparam(f) for f in fields})
    return stmt.where(member_of(plans.c.status, "only_if")) if only_if else stmt


async def update_plan(tx: Tx, plan_id: str, changes: dict[str, Any], *, only_if: Sequence[str] | None = None) -> bool:
    """Change a plan (only from the `only_if` statuses, when given); False when nothing changed."""
    params = {"plan_id": plan_id, **changes}
    if only_if is not None:
        params["only_if"] = list(only_if)
    return await tx.run(_update_plan_statement(tuple(sorted(changes)), only_if is not None), params) == 1


# --- tenants and tokens -----------------------------------------------------------------------------

_FIND_TOKEN = (
    select(
        tokens.c.id,
        tokens.c.user_id,
        tokens.c.org_id,
        tokens.c.partner_id,
        tokens.c.scope,
        tokens.c.can_write,
        tokens.c.is_admin,
        tokens.c.expires_at,
        tokens.c.revoked_at,
    )
    .join_from(tokens, users, users.c.id == tokens.c.user_id)
    .where(tokens.c.token_hash == bindparam("token_hash"))
)


async def find_token(tx: Tx, token_hash: str) -> Record | None:
    """The token with this digest (only if its user exists)."""
    return await _first(tx, _FIND_TOKEN, {"token_hash": token_hash})


async def _first(tx: Tx, statement: Select[Any], params: dict[str, Any]) -> Record | None:
    found = await tx.records(statement, params)
    return found[0] if found else None


@cache
def _oldest_first(table: Table, owner: str | None = None) -> Select[Any]:
    """A table's rows, oldest first: all, or those whose `owner` column is the parameter of that name."""
    rows = select(table).order_by(table.c.created_at)
    return rows if owner is None else rows.where(table.c[owner] == bindparam(owner))


async def _list(tx: Tx, table: Table, owner: str, owner_id: str | None) -> list[Record]:
    """A table's rows, oldest first: all, or (`owner_id` given) those of that owner."""
    if owner_id is None:
        return await tx.records(_oldest_first(table))
    return await tx.records(_oldest_first(table, owner), {owner: owner_id})


_ORGS_OF_PARTNER = select(organizations.c.id).where(organizations.c.partner_id == bindparam("partner_id"))


async def org_ids_of_partner(tx: Tx, partner_id: str) -> list[str]:
    return [org_id for (org_id,) in await tx.rows(_ORGS_OF_PARTNER, {"partner_id": partner_id})]


_ORG_BY_NAME = select(organizations).where(organizations.c.name == bindparam("name"))
_ORG_BY_ID = select(organizations).where(organizations.c.id == bindparam("org_id"))
_INSERT_ORG = insert(organizations)


async def find_organization(tx: Tx, *, name: str | None = None, org_id: str | None = None) -> Record | None:
    return await _first(tx, _ORG_BY_NAME if name is not None else _ORG_BY_ID, {"name": name, "org_id": org_id})


async def list_organizations(tx: Tx) -> list[Record]:
    return await tx.records(_oldest_first(organizations))


async def insert_organization(tx: Tx, values: Record) -> None:
    await tx.run(_INSERT_ORG, values)


_USER_BY_EMAIL = select(users).where(users.c.email == bindparam("email"))
_INSERT_USER = insert(users)


async def find_user(tx: Tx, email: str) -> Record | None:
    return await _first(tx, _USER_BY_EMAIL, {"email": email})


async def list_users(tx: Tx, *, org_id: str | None = None) -> list[Record]:
    return await _list(tx, users, "org_id", org_id)


async def insert_user(tx: Tx, values: Record) -> None:
    await tx.run(_INSERT_USER, values)


_INSERT_TOKEN = insert(tokens)
_TOKEN_BY_HASH = select(tokens).where(tokens.c.token_hash == bindparam("token_hash"))
_REVOKE_TOKEN = (
    update(tokens)
    .where(tokens.c.id == bindparam("token_id"), tokens.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
)


async def insert_token(tx: Tx, values: Record) -> None:
    await tx.run(_INSERT_TOKEN, values)


async def token_by_hash(tx: Tx, token_hash: str) -> Record | None:
    return await _first(tx, _TOKEN_BY_HASH, {"token_hash": token_hash})


async def list_tokens(tx: Tx, *, user_id: str | None = None) -> list[Record]:
    return await _list(tx, tokens, "user_id", user_id)


async def revoke_token(tx: Tx, token_id: str, *, now: datetime) -> bool:
    return await tx.run(_REVOKE_TOKEN, {"token_id": token_id, "now": now}) == 1


# --- tool definitions (pins) ---

# Imported here so that this section stands alone in the file.
from parley.store.models import AiToolDefinition  # noqa: E402

tool_definitions: Table = AiToolDefinition.__table__  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True, slots=True)
class ToolPin:
    """A tool's pinned definition: the digest it must keep to run without an operator's approval."""

    name: str
    server: str
    digest: str
    approved_at: datetime | None


_TOOL_PINS = select(*_columns(ToolPin, tool_definitions)).order_by(tool_definitions.c.name)
_PIN_TOOL = insert_or_update(tool_definitions)
_RECORD_TOOL = _PIN_TOOL.on_conflict_do_nothing(index_elements=[tool_definitions.c.name])
_APPROVE_TOOL = _PIN_TOOL.on_conflict_do_update(
    index_elements=[tool_definitions.c.name],
    set_={c: _PIN_TOOL.excluded[c] for c in ("server", "digest", "definition", "approved_at")},
)


async def tool_pins(tx: Tx) -> list[ToolPin]:
    """Every pinned tool definition (operator-level: no tenant filter, the table has none)."""
    return [ToolPin(*row) for row in await tx.rows(_TOOL_PINS)]


class ToolDefinitionFields(TypedDict):
    """A tool's definition as it is pinned, with its digest."""

    name: str
    server: str
    digest: str
    definition: dict[str, Any]


async def record_tool_definition(tx: Tx, *, now: datetime, **tool: Unpack[ToolDefinitionFields]) -> bool:
    """Pin a tool seen for the first time (trust on first use); False when it is pinned already
    (by another process meanwhile, say), which leaves that pin as it is."""
    return await tx.run(_RECORD_TOOL, {**tool, "first_seen_at": now, "approved_at": None}) == 1


async def approve_tool_definition(tx: Tx, *, now: datetime, **tool: Unpack[ToolDefinitionFields]) -> None:
    """Pin a tool's current definition as an operator's approval (first sight kept as it was)."""
    await tx.run(_APPROVE_TOOL, {**tool, "first_seen_at": now, "approved_at": now})


# --- flags and the administrators' views -------------------------------------------------------------

_FLAG = (
    update(sessions)
    .where(sessions.c.id == bindparam("session_id"))
    .values(
        flagged_at=bindparam("now", type_=sessions.c.flagged_at.type),
        flagged_by=bindparam("user_id", type_=String),
        flag_reason=bindparam("reason", type_=Text),
    )
)


async def set_flag(tx: Tx, session_id: str, *, now: datetime | None, user_id: str | None, reason: str | None) -> None:
    """Flag a session for review (`now` None clears the flag). Not activity: the updated time stays."""
    await tx.run(_FLAG, {"session_id": session_id, "now": now, "user_id": user_id, "reason": reason})


@cache
def _admin_list_statements(scoped: bool, flagged: bool | None, by_user: bool, by_status: bool) -> tuple[Any, Any]:
    where = []
    if scoped:
        where.append(in_orgs(sessions.c.org_id))
    if flagged is not None:
        where.append(sessions.c.flagged_at.is_not(None) if flagged else sessions.c.flagged_at.is_(None))
    if by_user:
        where.append(sessions.c.user_id == bindparam("user_id"))
    if by_status:
        where.append(sessions.c.status == bindparam("status"))
    first = (sessions.c.flagged_at.desc(),) if flagged else ()
    rows = (
        select(sessions, users.c.email.label("user_email"))
        .select_from(sessions.outerjoin(users, users.c.id == sessions.c.user_id))
        .where(*where)
        .order_by(*first, sessions.c.last_activity_at.desc(), sessions.c.id)
        .offset(bindparam("offset"))
        .limit(bindparam("limit"))
    )
    count = select(func.count()).select_from(sessions).where(*where)
    return rows, count


class AdminSessionQuery(TypedDict):
    """Which sessions an admin lists (a None filter leaves its column unfiltered), and which page of them."""

    flagged: bool | None
    user_id: str | None
    status: str | None
    offset: int
    limit: int


async def admin_list_sessions(tx: Tx, tenant: Tenant, **query: Unpack[AdminSessionQuery]) -> tuple[list[Record], int]:
    """Every session of the tenant's organizations, whoever owns it (flagged first when asked
    for flagged ones), with its owner's email, and how many there are."""
    rows, count = _admin_list_statements(
        not tenant.sees_all, query["flagged"], query["user_id"] is not None, query["status"] is not None
    )
    params = {**query, **tenant.filter_params()}
    return await tx.records(rows, params), int(await tx.value(count, params) or 0)


_USER_EMAIL = select(users.c.email).where(users.c.id == bindparam("user_id"))


async def user_email(tx: Tx, user_id: str) -> str | None:
    return await tx.value(_USER_EMAIL, {"user_id": user_id})


# The optional filters of the tool-call views: a NULL parameter leaves its column unfiltered.
def _optional(column: Column[Any], name: str) -> Any:
    return or_(bindparam(name, type_=String).is_(None), column == bindparam(name, type_=String))


@cache
def _execution_statements(scoped: bool, bucket: str) -> tuple[Any, Any, Any]:
    where = [
        executions.c.created_at >= bindparam("since", type_=executions.c.created_at.type),
        executions.c.created_at < bindparam("until", type_=executions.c.created_at.type),
        _optional(executions.c.status, "status"),
        _optional(executions.c.tool_name, "tool_name"),
    ]
    if scoped:
        where.append(in_orgs(executions.c.org_id))
    by_tool = (
        select(
            executions.c.tool_name,
            executions.c.status,
            func.count(),
            func.avg(executions.c.duration_ms),
            func.count(executions.c.duration_ms),
        )
        .where(*where)
        .group_by(executions.c.tool_name, executions.c.status)
    )
    slot = utc_bucket(executions.c.created_at, bucket)
    series = select(slot, executions.c.status, func.count()).where(*where).group_by(slot, executions.c.status)
    recent = select(executions).where(*where).order_by(executions.c.created_at.desc()).limit(bindparam("limit"))
    return by_tool, series, recent


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionStats:
    """Tool calls in a time window: (tool, status, count, mean duration ms, how many had one),
    (bucket, status, count), and the newest calls."""

    by_tool: list[tuple[str, str, int, float | None, int]]
    series: list[tuple[str, str, int]]
    recent: list[Record]


async def execution_stats(
    tx: Tx,
    tenant: Tenant,
    *,
    since: datetime,
    until: datetime,
    status: str | None,
    tool_name: str | None,
    bucket: str,
    limit: int,
) -> ExecutionStats:
    by_tool, series, recent = _execution_statements(not tenant.sees_all, bucket)
    params = {
        "since": since,
        "until": until,
        "status": status,
        "tool_name": tool_name,
        "limit": limit,
        **tenant.filter_params(),
    }
    grouped = [
        (name, state, int(n), None if mean is None else float(mean), int(timed))
        for name, state, n, mean, timed in await tx.rows(by_tool, params)
    ]
    slots = [(slot, state, int(n)) for slot, state, n in await tx.rows(series, params)]
    return ExecutionStats(grouped, slots, await tx.records(recent, params))


_PENDING_COUNT = select(func.count()).where(
    executions.c.status == "pending", executions.c.expires_at > bindparam("now")
)


async def pending_execution_count(tx: Tx, *, now: datetime) -> int:
    """Tool calls waiting for a person's decision, in every visible organization."""
    return int(await tx.value(_PENDING_COUNT, {"now": now}) or 0)


# --- the audit trail ----------------------------------------------------------------------------------

_AUDIT_COLUMNS = tuple(c.key for c in audit_events.columns if c.key != "id")  # the id is the sequence's
# inline: no RETURNING of the new id, which nobody reads.
_AUDIT_VALUES = {key: bindparam(key, type_=audit_events.c[key].type) for key in _AUDIT_COLUMNS}
_INSERT_AUDIT = insert(audit_events).values(_AUDIT_VALUES).inline()


# PostgreSQL: a message and its event in one statement (the audit row's parameters are prefixed).
def _prefixed_insert(table: Table, prefix: str, columns: Sequence[str], *, only_with: CTE | None = None) -> Insert:
    """An insert whose parameters are named `prefix` + column: beside other statements in one.
    With `only_with`, the row is written only if that statement's result has a row."""
    values = [bindparam(prefix + key, type_=table.c[key].type) for key in columns]
    if only_with is None:
        return insert(table).values(dict(zip(columns, values, strict=True))).inline()
    return insert(table).from_select(list(columns), select(*values).select_from(only_with))


def _prefixed(prefix: str, params: Record) -> Record:
    return {prefix + key: value for key, value in params.items()}


_INSERT_PREFIXED_AUDIT = _prefixed_insert(audit_events, "audit_", _AUDIT_COLUMNS)
_INSERT_MESSAGE_AND_AUDIT = _INSERT_PREFIXED_AUDIT.add_cte(_INSERT_MESSAGE.cte("message"))


# PostgreSQL: the admission's writes and its read in one statement (`admit_message`). Each
# sub-statement sees the snapshot the statement started with, so the history read excludes the
# message inserted beside it. When the lease is held, `taken` is empty: nothing is written and no
# row comes back.
_TAKEN = _TAKE_TURN.cte("taken")
_EARLIER = _HISTORY.add_columns(*_ORDER).subquery("earlier")
_ADMIT_MESSAGE = (
    select(_TAKEN.c.stream_number, _EARLIER.c.role, _EARLIER.c.content, _EARLIER.c.parts)
    .select_from(_TAKEN.outerjoin(_EARLIER, true()))
    .order_by(_EARLIER.c.position, _EARLIER.c.created_at, _EARLIER.c.id)
    .add_cte(_prefixed_insert(messages, "message_", [c.key for c in messages.columns], only_with=_TAKEN).cte("message"))
    .add_cte(_prefixed_insert(audit_events, "audit_", _AUDIT_COLUMNS, only_with=_TAKEN).cte("audit"))
)


async def admit_message(
    tx: Tx,
    *,
    lease: LeaseFields,
    title: str | None,
    context: dict[str, Any] | None,
    message: MessageFields,
    audit: Record,
) -> tuple[int, Sequence[HistoryRow]] | None:
    """Take the session's free turn lease (`take_turn`), read its history, and write the message
    admitted with its audit event: (the turn's event stream, the history before the message), or
    None (and nothing written) when the lease is held. On PostgreSQL one statement, one round trip.
    A caller that refuses the message afterwards (a budget) rolls its unit back."""
    session_id = message["session_id"]
    if tx.dialect != "postgresql":
        stream = await take_turn(tx, session_id, title=title, context=context, **lease)
        if stream is None:
            return None
        history = await history_rows(tx, session_id)
        await insert_message(tx, audit=audit, **message)
        return stream, history
    params = {
        **_take_turn_params(session_id, title=title, context=context, **lease),
        **_prefixed("message_", _message_params(new_id(), message)),
        **_prefixed("audit_", audit),
    }
    found = await tx.rows(_ADMIT_MESSAGE, params)
    if not found:
        return None
    history = [(role, content, parts) for _, role, content, parts in found if role is not None]
    return found[0][0], history


async def insert_audit_event(tx: Tx, values: Record) -> None:
    """Append one event (every column but the id: `AiAuditEvent`)."""
    await tx.run(_INSERT_AUDIT, values)


async def insert_audit_events(tx: Tx, rows: Sequence[Record]) -> None:
    if rows:
        await tx.run_many(_INSERT_AUDIT, rows)


# PostgreSQL: the owner's function (the application may not delete); SQLite has no roles.
_PRUNE_AUDIT_POSTGRES = select(func.parley_prune_audit_events(bindparam("days", type_=Integer)))
_PRUNE_AUDIT_SQLITE = delete(audit_events).where(audit_events.c.created_at < bindparam("before"))


async def prune_audit_events(tx: Tx, *, keep_days: int, now: datetime) -> int:
    """Delete audit events older than `keep_days` days (at least 1); how many went."""
    if keep_days < 1:
        raise ValueError("the audit trail is kept at least one day")
    if tx.dialect == "postgresql":
        return int(await tx.value(_PRUNE_AUDIT_POSTGRES, {"days": keep_days}) or 0)
    return await tx.run(_PRUNE_AUDIT_SQLITE, {"before": now - timedelta(days=keep_days)})


@cache
def _audit_statement(scoped: bool, by_action: bool) -> Select[Any]:
    where = [audit_events.c.created_at >= bindparam("since")]
    if scoped:
        where.append(in_orgs(audit_events.c.org_id))
    if by_action:
        where.append(audit_events.c.action == bindparam("action"))
    else:
        where.append(
            or_(
                audit_events.c.action.startswith("ai.security.", autoescape=True),
                audit_events.c.action.startswith("ai.tool.", autoescape=True),
            )
        )
    return (
        select(audit_events)
        .where(*where)
        .order_by(audit_events.c.created_at.desc(), audit_events.c.id.desc())
        .limit(bindparam("limit"))
    )


async def security_events(tx: Tx, tenant: Tenant, *, since: datetime, action: str | None, limit: int) -> list[Record]:
    """Audit events since `since`, newest first: those of one action, or else the security
    events (`ai.security.*`) and tool calls (`ai.tool.*`)."""
    stmt = _audit_statement(not tenant.sees_all, action is not None)
    return await tx.records(stmt, {"since": since, "action": action, "limit": limit, **tenant.filter_params()})
