"""A plain turn stored in one statement on PostgreSQL: `parley_store_turn(...)` (migration 0009).

The writes are those of the transaction `chat/sessions.py` `_persist` runs otherwise (the round's
reservation, the session's totals and lease, the reply, the cost rows), in the same order, with
row-level security applying to each; the statement is sent outside any transaction
(`Database.autocommit`), so PostgreSQL commits it before it answers: one round trip, and the
organization's cost rows are locked for microseconds instead of a round trip.

Imports: SQLAlchemy (statement building only) and the store.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, Integer, String, Text, bindparam, func, select

from parley.store.ids import new_id
from parley.store.repositories import TurnTotals, period_keys
from parley.store.tenancy import Tenant
from parley.store.types import Money, UTCDateTime

if TYPE_CHECKING:
    from parley.store.db import Database

# The function's parameters, in its order, with the types whose conversions the values go through.
_PARAMETERS: tuple[tuple[str, Any], ...] = (
    ("scope", Text()),
    ("org_ids", Text()),
    ("user_id", Text()),
    ("reservation_id", String()),
    ("session_id", String()),
    ("lease_token", String()),
    ("release", Boolean()),
    ("turns", Integer()),
    ("now", UTCDateTime()),
    ("input_tokens", Integer()),
    ("output_tokens", Integer()),
    ("cache_read_tokens", Integer()),
    ("cache_write_tokens", Integer()),
    ("cost_cents", Money()),
    ("position", Integer()),
    ("content", Text()),
    ("parts", JSON()),
    ("reply_input_tokens", Integer()),
    ("reply_output_tokens", Integer()),
    ("reply_cache_read_tokens", Integer()),
    ("reply_cache_write_tokens", Integer()),
    ("reply_cost_cents", Money()),
    ("usage_estimated", Boolean()),
    ("finish_reason", String()),
    ("org_id", String()),
    ("daily_key", String()),
    ("daily_id", String()),
    ("monthly_key", String()),
    ("monthly_id", String()),
    ("messages", Integer()),
)
_STORE_TURN = select(func.parley_store_turn(*(bindparam(name, type_=type_) for name, type_ in _PARAMETERS)))


async def store_turn(
    db: Database,
    org_id: str,
    *,
    session_id: str,
    lease_token: str,
    reservation_id: str | None,
    release: bool,
    count_turn: bool,
    now: datetime,
    totals: TurnTotals,
    position: int,
    content: str,
    parts: list[dict[str, Any]],
    reply_tokens: tuple[int, int, int, int],  # the whole reply's: input, output, cache read, cache write
    reply_cost_cents: Decimal,
    usage_estimated: bool,
    finish_reason: str | None,
    cost_messages: int | None,  # the cost rows get the totals and this many messages; None: not touched
) -> None:
    """Store a turn's round as `_persist`'s transaction would, in one statement (the reply's id is
    the lease token, as there)."""
    tenant = Tenant.for_org(org_id)
    daily, monthly = period_keys(now)
    params = {
        "scope": tenant.scope,
        "org_ids": tenant.org_list,
        "user_id": "",
        "reservation_id": reservation_id,
        "session_id": session_id,
        "lease_token": lease_token,
        "release": release,
        "turns": 1 if count_turn else 0,
        "now": now,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "cost_cents": totals.cost_cents,
        "position": position,
        "content": content,
        "parts": parts,
        "reply_input_tokens": reply_tokens[0],
        "reply_output_tokens": reply_tokens[1],
        "reply_cache_read_tokens": reply_tokens[2],
        "reply_cache_write_tokens": reply_tokens[3],
        "reply_cost_cents": reply_cost_cents,
        "usage_estimated": usage_estimated,
        "finish_reason": finish_reason,
        "org_id": org_id,
        "daily_key": daily if cost_messages is not None else None,
        "daily_id": new_id(),
        "monthly_key": monthly,
        "monthly_id": new_id(),
        "messages": cost_messages or 0,
    }
    await db.autocommit(_STORE_TURN, params)
