"""Admission of a message: every check and write that must happen atomically before a turn.

Runs inside the caller's transaction (the session row was just read in it): tool calls still
waiting for a decision (refused), max turns, the organization's enabled flag and rate limits,
then the turn lease with the user message, its title and its audit event, and the history before
it (on PostgreSQL in one statement), then the budget reservation with `max_tokens` lowered to
fit. Any refusal raises and the transaction rolls back: a refused attempt leaves no message, no
lease and no reservation, so it never counts.

A reply whose waiting calls all expired is closed here, before its history is read: each call
that did not run gets its result (expired, denied, or approved too late to run), so the model
sees why, and the conversation goes on.

Imports chat, billing, providers and store; never the web layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

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
from parley.chat.context import Fitted, Plan, fit_rows, with_summary
from parley.chat.history import HistoryRow
from parley.chat.prompt import render_system_prompt, title_from
from parley.chat.tool_calls import (
    APPROVAL_MODES,
    DENIED,
    EXPIRED,
    ActivePlan,
    ApprovalMode,
    ApprovalPolicy,
    result_part,
)
from parley.errors import ApprovalPendingError, MaxTurnsReachedError, TurnInProgressError
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
    policy: ApprovalPolicy  # who decides the turn's tool calls
    fitted: Fitted  # what of the history the model is sent
    rows: Sequence[HistoryRow]  # the whole history as stored, to fit again tighter
    base_system_prompt: str  # the system prompt without a summary
    fixed_chars: int  # the system prompt, the message and the tool definitions


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


def approval_mode(budget: BudgetLimits | Record | None) -> ApprovalMode:
    """The organization's approval mode, from its budget (the admission's projection or the row)."""
    if budget is None:
        return "per_step"
    mode = budget["approval_mode"] if isinstance(budget, dict) else budget.approval_mode
    return next((known for known in APPROVAL_MODES if known == mode), "per_step")


class ApprovalState(Protocol):
    """What a session row says about approvals (a TurnSession, or the whole row's fields)."""

    @property
    def id(self) -> str: ...
    @property
    def approvals_paused(self) -> bool: ...
    @property
    def allowed_tools(self) -> list[str] | None: ...


async def approval_policy(tx: Tx, row: ApprovalState, mode: ApprovalMode) -> ApprovalPolicy:
    """The session's approval policy as stored: its organization's mode, its pause, its
    always-allowed tools, and the plan it carries out (action_plan mode)."""
    plan = None
    if mode == "action_plan" and not row.approvals_paused:
        running = await repo.session_plans(tx, row.id, ["approved"])
        if running:
            plan = ActivePlan(
                id=running[0]["id"], steps=tuple(running[0]["steps"]), current_step=running[0]["current_step"]
            )
    return ApprovalPolicy(
        mode=mode,
        paused=row.approvals_paused,
        allowed=frozenset(row.allowed_tools or ()),
        plan=plan,
    )


async def reserve(
    tx: Tx,
    org_id: str,
    session_id: str,
    limits: Limits,
    *,
    texts: list[str],
    prices: Prices,
    max_tokens: int | None,
    now: datetime,
    ttl: timedelta,
) -> tuple[Allowance, str | None]:
    """Reserve a model round's worst-case cost (see billing.budget); raises when the budget cannot
    pay for it. The allowance and the reservation's id (None when nothing is reserved)."""
    if not limits.spends_are_limited:
        return Allowance(max_tokens=max_tokens, reserve_cents=Decimal(0)), None
    daily, monthly, reserved = await repo.spend(tx, org_id, now=now)
    allowance = plan_turn(
        limits=limits,
        spend=Spend(daily_cents=daily + reserved, monthly_cents=monthly + reserved),
        prices=prices,
        input_tokens=input_tokens_bound(texts),
        max_tokens=max_tokens,
        now=now,
    )
    if allowance.reserve_cents <= 0:
        return allowance, None
    reservation_id = await repo.add_reservation(
        tx, org_id, session_id, allowance.reserve_cents, now=now, expires_at=now + ttl
    )
    return allowance, reservation_id


async def close_expired_round(tx: Tx, row: TurnSession, now: datetime) -> None:
    """Refuse a message while calls of the last reply wait; if they all expired, give every call
    that did not run its result, and mark the reply as ended."""
    message_id = row.awaiting_approval
    assert message_id is not None
    await repo.expire_pending(tx, now=now, message_id=message_id)
    calls = await repo.reply_executions(tx, message_id)
    if any(call["status"] == "pending" for call in calls):
        raise ApprovalPendingError()
    reply = await repo.get_message(tx, message_id)
    parts = list(reply["content_parts"] or []) if reply is not None else []
    answered = {p.get("toolUseId") for p in parts if isinstance(p, dict) and p.get("type") == "tool_result"}
    for call in calls:
        if call["tool_use_id"] in answered:
            continue
        if call["status"] == "denied":
            text = DENIED + (f" Their reason: {call['decision_reason']}" if call["decision_reason"] else "")
        elif call["status"] == "approved":
            text = "Approved, but not run: other calls of the same step were not decided in time."
            await repo.update_execution(tx, call["id"], {"status": "expired", "completed_at": now})
        else:
            text = EXPIRED
        parts.append(result_part(call["tool_use_id"], call["tool_name"], text, is_error=True))
    if reply is not None:
        await repo.close_reply(tx, message_id, parts=parts, finish_reason="approval_expired")
    await repo.set_awaiting(tx, row.id, None)


async def admit(
    tx: Tx,
    row: TurnSession,
    budget: BudgetLimits | None,
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
    audit: Record,
    context: Plan | None = None,
) -> Admission:
    """Admit `text` (see the module docstring). `budget` is the organization's budget row, read and
    locked in this transaction after the session's row (`repo.session_and_budget_for_turn`), so
    admissions of one organization pass the budget and rate limits one at a time; `audit`, the
    event that records the message, is written with it."""
    if row.awaiting_approval is not None:
        await close_expired_round(tx, row, now)
    if row.turn_count >= row.max_turns:
        raise MaxTurnsReachedError(row.max_turns)
    limits = limits_of(budget)
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
    position = row.message_count + 1
    # The lease, the session's activity, message count, title and context, and the message with
    # its event; a refusal below (the budget) rolls them back.
    taken = await repo.admit_message(
        tx,
        lease={"token": lease, "owner": owner, "now": now, "expires_at": now + lease_ttl},
        title=title,
        context=page_context,
        message={
            "session_id": row.id,
            "position": position,
            "role": "user",
            "content": text,
            "parts": [{"type": "text", "text": text}],
            "created_at": now,
        },
        audit=audit,
    )
    if taken is None:
        raise TurnInProgressError()
    stream, stored = taken
    snapshot = page_context if page_context is not None else row.context_snapshot
    system_prompt = render_system_prompt(row.system_prompt or "", snapshot)
    plan = context or Plan()
    fixed_chars = len(system_prompt) + len(text) + plan.tools_chars
    fitted, _ = fit_rows(stored, plan, fixed_chars=fixed_chars, max_tokens=max_tokens)
    history = fitted.history
    base_system_prompt = system_prompt
    if fitted.summary is not None:
        system_prompt = with_summary(system_prompt, fitted.summary.text)
    allowance, reservation_id = await reserve(
        tx,
        row.org_id,
        row.id,
        limits,
        texts=[system_prompt, *(m.sent_text for m in history), text] if limits.spends_are_limited else [],
        prices=prices,
        max_tokens=fitted.max_tokens,
        now=now,
        ttl=reservation_ttl,
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
        policy=await approval_policy(tx, row, approval_mode(budget)),
        fitted=fitted,
        rows=stored,
        base_system_prompt=base_system_prompt,
        fixed_chars=fixed_chars,
    )
