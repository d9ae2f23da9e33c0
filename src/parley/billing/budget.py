"""Budget and rate-limit decisions, as pure functions of numbers (no I/O, no clock of their own).

An organization's limits are `null` = unlimited and `0` = nothing allowed. A turn is admitted
with a *reservation* of its worst-case cost — the input as sent, priced as if every byte were a
token (no byte-level tokenizer makes more tokens than bytes), plus `max_tokens` of output —
against what remains of the daily and monthly budgets after committed spend and the other
turns' outstanding reservations. `max_tokens` is lowered until the reservation fits; if not even
a minimal reply fits, the turn is refused before the model is called. The reservation is settled
to the real cost when the turn ends, so parallel turns together cannot pass the budget.

Imports: standard library, parley.billing.cost, parley.errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from parley.billing.cost import Prices
from parley.errors import (
    AiDisabledError,
    BudgetExhaustedError,
    BudgetInsufficientError,
    DailyBudgetExhaustedError,
    MonthlyBudgetExhaustedError,
    RateLimitedError,
)

MIN_REPLY_TOKENS = 16  # below this a reply is not worth starting: refuse with 402 instead
_PER_MESSAGE_OVERHEAD = 16  # chat-template tokens around each message (role markers, separators)
_CENTS_PER_USD = Decimal(100)
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Limits:
    """An organization's limits (None = unlimited)."""

    enabled: bool = True
    daily_cents: Decimal | None = None
    monthly_cents: Decimal | None = None
    messages_per_minute_per_user: int | None = None
    messages_per_hour_per_org: int | None = None

    @property
    def spends_are_limited(self) -> bool:
        return self.daily_cents is not None or self.monthly_cents is not None


@dataclass(frozen=True, slots=True)
class Spend:
    """Committed cost plus outstanding reservations, per window (cents)."""

    daily_cents: Decimal
    monthly_cents: Decimal


@dataclass(frozen=True, slots=True)
class Allowance:
    """What an admitted turn may use: its output cap and the amount reserved for it."""

    max_tokens: int | None
    reserve_cents: Decimal


def input_tokens_bound(texts: list[str]) -> int:
    """An upper bound on the prompt's tokens: its UTF-8 bytes plus template overhead."""
    return sum(len(t.encode()) + _PER_MESSAGE_OVERHEAD for t in texts) + _PER_MESSAGE_OVERHEAD


def day_reset(now: datetime) -> datetime:
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def month_reset(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def check_enabled(limits: Limits) -> None:
    if not limits.enabled:
        raise AiDisabledError()


def check_rate(
    *, limit: int | None, used: int, oldest: datetime | None, window: timedelta, now: datetime, scope: str
) -> None:
    """Refuse when `used` accepted messages in the window already reach `limit`."""
    if limit is None or used < limit:
        return
    retry_after = 1.0 if oldest is None or limit == 0 else max((oldest + window - now).total_seconds(), 1.0)
    raise RateLimitedError(
        f"Rate limit reached: {limit} messages per {_window_name(window)} {scope}. "
        f"Try again in {math.ceil(retry_after)} s.",
        retry_after=retry_after,
    )


def _window_name(window: timedelta) -> str:
    return "minute" if window <= timedelta(minutes=1) else "hour"


def plan_turn(
    *,
    limits: Limits,
    spend: Spend,
    prices: Prices,
    input_tokens: int,
    max_tokens: int | None,
    now: datetime,
) -> Allowance:
    """Admit a turn within what remains of the budgets, or raise BudgetExhaustedError (402)."""
    if not limits.spends_are_limited:
        return Allowance(max_tokens=max_tokens, reserve_cents=Decimal(0))
    remaining, window = _tightest(limits, spend)
    if remaining <= 0:
        raise _exhausted(window, now)
    input_price = max(prices.input_per_m_usd, prices.cache_write_per_m_usd)
    input_cents = _cents(input_tokens * input_price)
    output_cents_per_token = _cents(prices.output_per_m_usd)
    left = remaining - input_cents
    capped: int | None = max_tokens
    if output_cents_per_token > 0:
        affordable = int(left / output_cents_per_token) if left > 0 else 0
        capped = affordable if max_tokens is None else min(max_tokens, affordable)
    if left < 0 or (capped is not None and capped < MIN_REPLY_TOKENS):
        raise BudgetInsufficientError(
            f"The remaining {window} budget ({_usd(remaining)}) cannot pay for this turn: "
            "the conversation is too long or the budget too low.",
            resets_at=day_reset(now) if window == "daily" else month_reset(now),
        )
    reserve = input_cents + (output_cents_per_token * capped if capped is not None else 0)
    return Allowance(max_tokens=capped, reserve_cents=reserve.quantize(Decimal("0.000001")))


def remaining_cents(limits: Limits, spend: Spend) -> tuple[Decimal | None, Decimal | None]:
    daily = None if limits.daily_cents is None else limits.daily_cents - spend.daily_cents
    monthly = None if limits.monthly_cents is None else limits.monthly_cents - spend.monthly_cents
    return daily, monthly


def _tightest(limits: Limits, spend: Spend) -> tuple[Decimal, str]:
    daily, monthly = remaining_cents(limits, spend)
    candidates = [(v, name) for v, name in ((daily, "daily"), (monthly, "monthly")) if v is not None]
    return min(candidates, key=lambda c: c[0])


def _exhausted(window: str, now: datetime) -> BudgetExhaustedError:
    resets = day_reset(now) if window == "daily" else month_reset(now)
    kind = DailyBudgetExhaustedError if window == "daily" else MonthlyBudgetExhaustedError
    return kind(f"The organization's {window} AI budget is spent. It resets at {resets.isoformat()}.", resets_at=resets)


def _cents(usd_per_million: Decimal) -> Decimal:
    return usd_per_million * _CENTS_PER_USD / _MILLION


def _usd(cents: Decimal) -> str:
    return f"${max(cents, Decimal(0)) / _CENTS_PER_USD:.4f}"
