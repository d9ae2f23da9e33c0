"""Admission of a message: every check and write that must happen atomically before a turn.

Runs inside the caller's transaction (the session row was just read in it): max turns, the
organization's enabled flag and rate limits, the turn lease, the history (loaded here, before the
current message is written, so it excludes it), the budget reservation with `max_tokens` lowered
to fit, then the user message and the title. Any refusal raises and the transaction rolls back:
a refused attempt leaves no message, no lease and no reservation, so it never counts.

Imports chat, billing, providers and store; never the web layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from parley.billing.budget import (
    Allowance,
    Limits,
    Spend,
    check_enabled,
    check_rate,
    input_tokens_bound,
    plan_turn,
)
from parley.billing.cost import Prices
from parley.chat.history import build_history
from parley.chat.prompt import render_system_prompt, title_from
from parley.errors import MaxTurnsReachedError, TurnInProgressError
from parley.providers.base import ChatMessage
from parley.store import repositories as repo
from parley.store.repositories import BudgetLimits, TurnSession
from parley.store.sql import Record, Tx

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """What an admitted turn carries into the turn (chat.turns)."""

    system_prompt: str
    history: list[ChatMessage]
    max_tokens: int | None
    metered: bool  # cut the stream at max_tokens: the reservation covers no more
    reservation_id: str | None
    reserved_cents: Decimal
    title: str | None
    stream: int  # the number of the turn's event stream
    user_position: int  # the user message's place in the session; the reply takes the next one


def limits_of(budget: BudgetLimits | Record | None) -> Limits:
    """The limits of a budget row (admission's projection, or the whole row the API shows)."""
    if budget is None:
        return Limits()
    if isinstance(budget, dict):
        budget = BudgetLimits(**{name: budget[name] for name in BudgetLimits.__dataclass_fields__})
    return Limits(
        enabled=budget.enabled,
        daily_cents=budget.daily_budget_cents,
        monthly_cents=budget.monthly_budget_cents,
        messages_per_minute_per_user=budget.messages_per_minute_per_user,
        messages_per_hour_per_org=budget.messages_per_hour_per_org,
    )


async def admit(
    tx: Tx,
    row: TurnSession,
    *,
    text: str,
    lease: str,
    owner: str,
    lease_ttl: timedelta,
    reservation_ttl: timedelta,
    now: datetime,
    max_tokens: int | None,
    prices: Prices,
    page_context: dict[str, Any] | None,
) -> Admission:
    if row.turn_count >= row.max_turns:
        raise MaxTurnsReachedError(row.max_turns)
    limits = limits_of(await repo.budget_limits(tx, row.org_id))
    check_enabled(limits)
    windows = (
        (limits.messages_per_minute_per_user, MINUTE, {"user_id": row.user_id}, "per user"),
        (limits.messages_per_hour_per_org, HOUR, {"org_id": row.org_id}, "for this organization"),
    )
    for limit, window, who, scope in windows:
        if limit is None or None in who.values():
            continue
        used, oldest = await repo.accepted_messages(tx, since=now - window, **who)
        check_rate(limit=limit, used=used, oldest=oldest, window=window, now=now, scope=scope)
    title = title_from(text) if row.title is None else None
    # The lease, and the session's activity, message count, title and context for this message.
    stream = await repo.take_turn(
        tx, row.id, token=lease, owner=owner, now=now, expires_at=now + lease_ttl, title=title, context=page_context
    )
    if stream is None:
        raise TurnInProgressError()

    stored = await repo.history_rows(tx, row.id)
    history = build_history(row.id, stored)
    context = page_context if page_context is not None else row.context_snapshot
    system_prompt = render_system_prompt(row.system_prompt or "", context)
    allowance = Allowance(max_tokens=max_tokens, reserve_cents=Decimal(0))
    reservation_id = None
    if limits.spends_are_limited:
        daily, monthly, reserved = await repo.spend(tx, row.org_id, now=now)
        texts = [system_prompt, *(m.plain_text for m in history), text]
        allowance = plan_turn(
            limits=limits,
            spend=Spend(daily_cents=daily + reserved, monthly_cents=monthly + reserved),
            prices=prices,
            input_tokens=input_tokens_bound(texts),
            max_tokens=max_tokens,
            now=now,
        )
        if allowance.reserve_cents > 0:
            reservation_id = await repo.add_reservation(
                tx, row.org_id, row.id, allowance.reserve_cents, now=now, expires_at=now + reservation_ttl
            )

    position = row.message_count + 1
    await repo.insert_message(
        tx,
        session_id=row.id,
        position=position,
        role="user",
        content=text,
        parts=[{"type": "text", "text": text}],
        created_at=now,
    )
    return Admission(
        system_prompt=system_prompt,
        history=history,
        max_tokens=allowance.max_tokens,
        metered=limits.spends_are_limited,
        reservation_id=reservation_id,
        reserved_cents=allowance.reserve_cents,
        title=title,
        stream=stream,
        user_position=position,
    )
