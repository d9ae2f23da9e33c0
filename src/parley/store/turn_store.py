"""A turn's reads and writes (admission and persistence) as plain SQL on the database driver.

These statements run for every message, and each takes microseconds in the database; through the
ORM session they cost about a hundred times that in Python (docs/performance.md). So the SQL is
text, written once per dialect, and runs:

- on a SQLite file: straight on a `sqlite3` connection, inline on the event loop (as
  `sqlite_inline.py` does for the engine); nothing else sits on the path;
- elsewhere (PostgreSQL, in-memory SQLite): as `text()` on an `AsyncConnection` of the engine,
  after the tenant's settings, so row-level security binds exactly as in `Database.transaction`.

Values cross in each dialect's stored form (`Codec`), the same forms the ORM's column types use
(`store/types.py`): rows written here and through the ORM read back the same. Units of work come
from `Database.turn_transaction(tenant)`; methods here never commit.

Imports: standard library, SQLAlchemy's `text` and `parley.store.ids`.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from parley.store.ids import new_id

_MICRO = Decimal(1_000_000)
_SIX_PLACES = Decimal("0.000001")


# --- stored forms -----------------------------------------------------------------------------------


class Codec:
    """PostgreSQL's stored forms: aware datetimes, NUMERIC cents, JSON as text."""

    @staticmethod
    def when(value: datetime) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    @staticmethod
    def read_when(value: Any) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @staticmethod
    def money(value: Decimal) -> Any:
        return Decimal(value).quantize(_SIX_PLACES)

    @staticmethod
    def read_money(value: Any) -> Decimal:
        return Decimal(value).quantize(_SIX_PLACES)


class SqliteCodec(Codec):
    """SQLite's: naive UTC text (SQLAlchemy's DATETIME format), integer micro-cents."""

    @staticmethod
    def when(value: datetime) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    @staticmethod
    def read_when(value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    @staticmethod
    def money(value: Decimal) -> Any:
        return int(Decimal(value).quantize(_SIX_PLACES) * _MICRO)

    @staticmethod
    def read_money(value: Any) -> Decimal:
        return (Decimal(int(value)) / _MICRO).quantize(_SIX_PLACES)


def _read_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


# --- rows -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """The columns of an organization's budget that admission checks (same names as AiBudget)."""

    enabled: bool
    daily_budget_cents: Decimal | None
    monthly_budget_cents: Decimal | None
    messages_per_minute_per_user: int | None
    messages_per_hour_per_org: int | None


@dataclass(frozen=True, slots=True)
class TurnTotals:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_cents: Decimal


HistoryRow = tuple[str, str | None, Any]  # (role, content, content_parts or None)


# --- the statements ---------------------------------------------------------------------------------

_SESSION_COLUMNS = (
    "id, org_id, user_id, status, title, model, system_prompt, context_snapshot, "
    "turn_count, max_turns, message_count, created_at, last_activity_at"
)
_MESSAGE_COLUMNS = (
    "id, session_id, position, role, content, content_parts, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, cost_cents, usage_estimated, finish_reason, created_at"
)


@dataclass(frozen=True, slots=True)
class TurnSql:
    """Every statement of the turn path, for one dialect."""

    get_session: str
    get_budget: str
    release_lease: str
    history: str
    insert_message: str
    insert_reservation: str
    delete_reservation: str
    committed: str
    reserved: str
    record_turn: str
    add_cost_usage: str
    set_status: str
    set_status_if: str

    @staticmethod
    @cache
    def for_dialect(dialect: str) -> TurnSql:
        postgres = dialect == "postgresql"
        # History decodes a row's parts only where the stored JSON may hold a tool part.
        find = "strpos" if postgres else "instr"
        return TurnSql(
            get_session=f"SELECT {_SESSION_COLUMNS} FROM ai_sessions WHERE id = :session_id",
            get_budget=(
                "SELECT enabled, daily_budget_cents, monthly_budget_cents, messages_per_minute_per_user, "
                "messages_per_hour_per_org FROM ai_budgets WHERE org_id = :org_id" + (" FOR UPDATE" if postgres else "")
                # PostgreSQL: serializes the admissions of one organization (SQLite writers are
                # serialized by BEGIN IMMEDIATE already).
            ),
            release_lease=(
                "UPDATE ai_sessions SET lease_token = NULL, lease_expires_at = NULL "
                "WHERE id = :session_id AND lease_token = :token"
            ),
            history=(
                "SELECT role, content, "
                f"CASE WHEN {find}(CAST(content_parts AS TEXT), '\"tool_') > 0 THEN content_parts END "
                "FROM ai_messages WHERE session_id = :session_id ORDER BY position, created_at, id"
            ),
            insert_message=(
                f"INSERT INTO ai_messages ({_MESSAGE_COLUMNS}) VALUES (:id, :session_id, :position, :role, "
                ":content, :content_parts, :input_tokens, :output_tokens, :cache_read_tokens, "
                ":cache_write_tokens, :cost_cents, :usage_estimated, :finish_reason, :created_at)"
            ),
            insert_reservation=(
                "INSERT INTO ai_budget_reservations (id, org_id, session_id, amount_cents, created_at, expires_at) "
                "VALUES (:id, :org_id, :session_id, :amount_cents, :created_at, :expires_at)"
            ),
            delete_reservation="DELETE FROM ai_budget_reservations WHERE id = :id",
            committed=(
                "SELECT period, total_cost_cents FROM ai_cost_usage WHERE org_id = :org_id AND "
                "((period = 'daily' AND period_key = :daily) OR (period = 'monthly' AND period_key = :monthly))"
            ),
            reserved=(
                "SELECT coalesce(sum(amount_cents), 0) FROM ai_budget_reservations "
                "WHERE org_id = :org_id AND expires_at > :now"
            ),
            record_turn=(
                "UPDATE ai_sessions SET "
                "total_input_tokens = total_input_tokens + :input_tokens, "
                "total_output_tokens = total_output_tokens + :output_tokens, "
                "total_cache_read_tokens = total_cache_read_tokens + :cache_read_tokens, "
                "total_cache_write_tokens = total_cache_write_tokens + :cache_write_tokens, "
                "total_cost_cents = total_cost_cents + :cost_cents, "
                "turn_count = turn_count + :turns, message_count = message_count + :messages, "
                "last_activity_at = :now, updated_at = :now, "
                # The lease goes with it, if it is still this turn's (the right-hand sides all
                # read the row as it was, so the second CASE sees the old lease_token too).
                "lease_expires_at = CASE WHEN lease_token = :token THEN NULL ELSE lease_expires_at END, "
                "lease_token = CASE WHEN lease_token = :token THEN NULL ELSE lease_token END "
                "WHERE id = :session_id"
            ),
            add_cost_usage=(
                # The day's row and the month's, in one statement (two rows, never the same one).
                "INSERT INTO ai_cost_usage (id, org_id, period, period_key, input_tokens, output_tokens, "
                "cache_read_tokens, cache_write_tokens, total_cost_cents, session_count, message_count, updated_at) "
                "VALUES (:daily_id, :org_id, 'daily', :daily, :input_tokens, :output_tokens, :cache_read_tokens, "
                ":cache_write_tokens, :cost_cents, 0, :messages, :now), "
                "(:monthly_id, :org_id, 'monthly', :monthly, :input_tokens, :output_tokens, :cache_read_tokens, "
                ":cache_write_tokens, :cost_cents, 0, :messages, :now) "
                "ON CONFLICT (org_id, period, period_key) DO UPDATE SET "
                "input_tokens = ai_cost_usage.input_tokens + excluded.input_tokens, "
                "output_tokens = ai_cost_usage.output_tokens + excluded.output_tokens, "
                "cache_read_tokens = ai_cost_usage.cache_read_tokens + excluded.cache_read_tokens, "
                "cache_write_tokens = ai_cost_usage.cache_write_tokens + excluded.cache_write_tokens, "
                "total_cost_cents = ai_cost_usage.total_cost_cents + excluded.total_cost_cents, "
                "message_count = ai_cost_usage.message_count + excluded.message_count, "
                "updated_at = excluded.updated_at"
            ),
            set_status="UPDATE ai_sessions SET status = :status, updated_at = :now WHERE id = :session_id",
            set_status_if=(
                "UPDATE ai_sessions SET status = :status, updated_at = :now "
                "WHERE id = :session_id AND status = :only_if"
            ),
        )


# --- units of work ----------------------------------------------------------------------------------


class TurnTx(ABC):
    """One transaction of the turn path. Subclasses say how a statement reaches the driver."""

    __slots__ = ("codec", "sql")

    def __init__(self, sql: TurnSql, codec: Codec) -> None:
        self.sql = sql
        self.codec = codec

    @abstractmethod
    async def fetch_one(self, statement: str, params: dict[str, Any]) -> Sequence[Any] | None: ...

    @abstractmethod
    async def fetch_all(self, statement: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]: ...

    @abstractmethod
    async def execute(self, statement: str, params: dict[str, Any]) -> int:
        """Run a write; the number of rows it touched."""

    # -- sessions ------------------------------------------------------------------------------------

    async def session(self, session_id: str) -> TurnSession | None:
        row = await self.fetch_one(self.sql.get_session, {"session_id": session_id})
        if row is None:
            return None
        c = self.codec
        (sid, org_id, user_id, status, title, model, prompt, context, turns, max_turns, messages, created, active) = row
        return TurnSession(
            id=sid,
            org_id=org_id,
            user_id=user_id,
            status=status,
            title=title,
            model=model,
            system_prompt=prompt,
            context_snapshot=_read_json(context),
            turn_count=turns,
            max_turns=max_turns,
            message_count=messages,
            created_at=c.read_when(created),  # type: ignore[arg-type]  # NOT NULL
            last_activity_at=c.read_when(active),  # type: ignore[arg-type]
        )

    async def take_turn(
        self,
        session_id: str,
        *,
        token: str,
        now: datetime,
        expires_at: datetime,
        title: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> bool:
        """Take the turn lease if free or expired, and record the message being admitted (activity,
        message count, title, context): one conditional UPDATE, atomic across processes."""
        when = self.codec.when
        sets = (
            "lease_token = :token, lease_expires_at = :expires_at, last_activity_at = :now, updated_at = :now, "
            "message_count = message_count + 1"
        )
        params: dict[str, Any] = {
            "session_id": session_id,
            "token": token,
            "expires_at": when(expires_at),
            "now": when(now),
        }
        if title is not None:
            sets += ", title = :title"
            params["title"] = title
        if context is not None:
            sets += ", context_snapshot = :context"
            params["context"] = json.dumps(context)
        statement = (
            f"UPDATE ai_sessions SET {sets} WHERE id = :session_id AND (lease_token IS NULL OR lease_expires_at < :now)"
        )
        return await self.execute(statement, params) == 1

    async def release_lease(self, session_id: str, *, token: str) -> None:
        await self.execute(self.sql.release_lease, {"session_id": session_id, "token": token})

    async def set_status(self, session_id: str, status: str, *, now: datetime, only_if: str | None = None) -> bool:
        params = {"session_id": session_id, "status": status, "now": self.codec.when(now)}
        if only_if is None:
            return await self.execute(self.sql.set_status, params) == 1
        return await self.execute(self.sql.set_status_if, {**params, "only_if": only_if}) == 1

    async def record_turn(
        self,
        session_id: str,
        *,
        totals: TurnTotals,
        count_turn: bool,
        now: datetime,
        lease_token: str,
        messages_added: int = 0,
    ) -> None:
        """Add a turn's usage to its session, count the turn, and release the lease."""
        params = {
            "session_id": session_id,
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "cache_read_tokens": totals.cache_read_tokens,
            "cache_write_tokens": totals.cache_write_tokens,
            "cost_cents": self.codec.money(totals.cost_cents),
            "turns": 1 if count_turn else 0,
            "messages": messages_added,
            "now": self.codec.when(now),
            "token": lease_token,
        }
        await self.execute(self.sql.record_turn, params)

    # -- messages ------------------------------------------------------------------------------------

    async def history_rows(self, session_id: str) -> list[HistoryRow]:
        """(role, content, content_parts) of a session in order, the current message excluded
        (it is written after). `content_parts` is None unless it may hold a tool part."""
        rows = await self.fetch_all(self.sql.history, {"session_id": session_id})
        return [(role, content, None if parts is None else _read_json(parts)) for role, content, parts in rows]

    async def insert_message(
        self,
        *,
        session_id: str,
        position: int,
        role: str,
        content: str,
        parts: list[dict[str, Any]],
        created_at: datetime,
        message_id: str | None = None,
        tokens: tuple[int, int, int, int] | None = None,  # input, output, cache read, cache write
        cost_cents: Decimal | None = None,
        usage_estimated: bool = False,
        finish_reason: str | None = None,
    ) -> None:
        input_tokens, output_tokens, cache_read, cache_write = tokens or (None, None, None, None)
        params = {
            "id": message_id or new_id(),
            "session_id": session_id,
            "position": position,
            "role": role,
            "content": content,
            "content_parts": json.dumps(parts),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write,
            "cost_cents": None if cost_cents is None else self.codec.money(cost_cents),
            "usage_estimated": usage_estimated,
            "finish_reason": finish_reason,
            "created_at": self.codec.when(created_at),
        }
        await self.execute(self.sql.insert_message, params)

    async def accepted_messages(
        self, *, since: datetime, user_id: str | None = None, org_id: str | None = None
    ) -> tuple[int, datetime | None]:
        """How many user messages were accepted since `since` (by a user or in an organization),
        and the oldest of them: a refused attempt stores no message, so it never counts."""
        statement = (
            "SELECT count(*), min(m.created_at) FROM ai_messages m JOIN ai_sessions s ON s.id = m.session_id "
            "WHERE m.role = 'user' AND m.created_at > :since"
        )
        params: dict[str, Any] = {"since": self.codec.when(since)}
        if user_id is not None:
            statement += " AND s.user_id = :user_id"
            params["user_id"] = user_id
        if org_id is not None:
            statement += " AND s.org_id = :org_id"
            params["org_id"] = org_id
        row = await self.fetch_one(statement, params)
        if row is None:
            return 0, None
        return int(row[0]), self.codec.read_when(row[1])

    # -- budgets and cost ----------------------------------------------------------------------------

    async def budget_limits(self, org_id: str) -> BudgetLimits | None:
        row = await self.fetch_one(self.sql.get_budget, {"org_id": org_id})
        if row is None:
            return None
        enabled, daily, monthly, per_user, per_org = row
        money = self.codec.read_money
        return BudgetLimits(
            enabled=bool(enabled),
            daily_budget_cents=None if daily is None else money(daily),
            monthly_budget_cents=None if monthly is None else money(monthly),
            messages_per_minute_per_user=per_user,
            messages_per_hour_per_org=per_org,
        )

    async def spend(self, org_id: str, *, now: datetime) -> tuple[Decimal, Decimal, Decimal]:
        """(today's committed cents, this month's committed cents, outstanding reservations)."""
        daily_key, monthly_key = period_keys(now)
        money = self.codec.read_money
        rows = await self.fetch_all(self.sql.committed, {"org_id": org_id, "daily": daily_key, "monthly": monthly_key})
        committed = {period: money(cents) for period, cents in rows}
        row = await self.fetch_one(self.sql.reserved, {"org_id": org_id, "now": self.codec.when(now)})
        reserved = money(row[0]) if row and row[0] is not None else Decimal(0)
        return committed.get("daily", Decimal(0)), committed.get("monthly", Decimal(0)), reserved

    async def add_reservation(
        self, org_id: str, session_id: str, amount: Decimal, *, now: datetime, expires_at: datetime
    ) -> str:
        reservation_id = new_id()
        params = {
            "id": reservation_id,
            "org_id": org_id,
            "session_id": session_id,
            "amount_cents": self.codec.money(amount),
            "created_at": self.codec.when(now),
            "expires_at": self.codec.when(expires_at),
        }
        await self.execute(self.sql.insert_reservation, params)
        return reservation_id

    async def delete_reservation(self, reservation_id: str) -> None:
        await self.execute(self.sql.delete_reservation, {"id": reservation_id})

    async def add_cost_usage(self, org_id: str, *, totals: TurnTotals, now: datetime, messages: int = 1) -> None:
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
            "cost_cents": self.codec.money(totals.cost_cents),
            "messages": messages,
            "now": self.codec.when(now),
        }
        await self.execute(self.sql.add_cost_usage, params)


def period_keys(now: datetime) -> tuple[str, str]:
    """(daily, monthly) keys in UTC."""
    return now.strftime("%Y-%m-%d"), now.strftime("%Y-%m")


class DriverTx(TurnTx):
    """On a `sqlite3` connection, inline: no await in here ever suspends."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(TurnSql.for_dialect("sqlite"), SqliteCodec())
        self._conn = conn

    async def fetch_one(self, statement: str, params: dict[str, Any]) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._conn.execute(statement, params).fetchone()
        return row

    async def fetch_all(self, statement: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return self._conn.execute(statement, params).fetchall()

    async def execute(self, statement: str, params: dict[str, Any]) -> int:
        return self._conn.execute(statement, params).rowcount


class EngineTx(TurnTx):
    """On an engine connection (`text()` statements, compiled once each)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        dialect = conn.dialect.name
        super().__init__(TurnSql.for_dialect(dialect), SqliteCodec() if dialect == "sqlite" else Codec())
        self._conn = conn

    async def fetch_one(self, statement: str, params: dict[str, Any]) -> Sequence[Any] | None:
        return (await self._conn.execute(_text(statement), params)).first()

    async def fetch_all(self, statement: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return (await self._conn.execute(_text(statement), params)).all()

    async def execute(self, statement: str, params: dict[str, Any]) -> int:
        result = await self._conn.execute(_text(statement), params)
        return int(getattr(result, "rowcount", 0) or 0)


@cache
def _text(statement: str) -> TextClause:
    return text(statement)
