"""Budget arithmetic and rate-limit decisions: exact Decimal cents, window edges, reset times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.billing.budget import (
    MIN_REPLY_TOKENS,
    Limits,
    Spend,
    check_enabled,
    check_rate,
    day_reset,
    input_tokens_bound,
    month_reset,
    plan_turn,
)
from parley.billing.cost import Prices
from parley.errors import AiDisabledError, BudgetExhaustedError, RateLimitedError

NOW = datetime(2026, 3, 31, 22, 15, tzinfo=UTC)
PRICES = Prices.flat(Decimal(3), Decimal(15))  # USD per million tokens
NONE = Spend(Decimal(0), Decimal(0))


def test_no_spending_limit_reserves_nothing_and_keeps_max_tokens() -> None:
    allowance = plan_turn(limits=Limits(), spend=NONE, prices=PRICES, input_tokens=10_000, max_tokens=512, now=NOW)
    assert (allowance.max_tokens, allowance.reserve_cents) == (512, Decimal(0))


def test_reservation_is_worst_case_input_plus_max_tokens_output() -> None:
    limits = Limits(daily_cents=Decimal(100))
    allowance = plan_turn(limits=limits, spend=NONE, prices=PRICES, input_tokens=1000, max_tokens=500, now=NOW)
    # 1000 * $3/M = 0.3 cents; 500 * $15/M = 0.75 cents.
    assert allowance.max_tokens == 500
    assert allowance.reserve_cents == Decimal("1.050000")


def test_max_tokens_is_lowered_to_fit_what_remains() -> None:
    limits = Limits(daily_cents=Decimal(1), monthly_cents=Decimal(50))
    spend = Spend(daily_cents=Decimal("0.4"), monthly_cents=Decimal(10))
    allowance = plan_turn(limits=limits, spend=spend, prices=PRICES, input_tokens=1000, max_tokens=4096, now=NOW)
    # 0.6 cents left today; input takes 0.3; 0.3 cents buys 200 output tokens at 0.0015 cents each.
    assert allowance.max_tokens == 200
    assert allowance.reserve_cents == Decimal("0.600000")


def test_the_tighter_window_wins() -> None:
    limits = Limits(daily_cents=Decimal(1000), monthly_cents=Decimal(1))
    allowance = plan_turn(limits=limits, spend=NONE, prices=PRICES, input_tokens=0, max_tokens=None, now=NOW)
    assert allowance.max_tokens == 666  # 1 cent / 0.0015


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        (Limits(daily_cents=Decimal(0)), "daily_budget_exhausted"),
        (Limits(monthly_cents=Decimal(0)), "monthly_budget_exhausted"),
    ],
)
def test_zero_means_nothing_allowed(limits: Limits, code: str) -> None:
    with pytest.raises(BudgetExhaustedError) as info:
        plan_turn(limits=limits, spend=NONE, prices=PRICES, input_tokens=1, max_tokens=10, now=NOW)
    assert info.value.error_code() == code
    assert info.value.status_code == 402


def test_spent_budget_says_when_it_resets() -> None:
    limits = Limits(daily_cents=Decimal(5))
    with pytest.raises(BudgetExhaustedError) as info:
        plan_turn(
            limits=limits, spend=Spend(Decimal(5), Decimal(5)), prices=PRICES, input_tokens=1, max_tokens=1, now=NOW
        )
    assert info.value.resets_at == datetime(2026, 4, 1, tzinfo=UTC)
    assert info.value.extra() == {"resetsAt": "2026-04-01T00:00:00Z"}


def test_a_turn_that_cannot_pay_for_a_minimal_reply_is_refused() -> None:
    limits = Limits(daily_cents=Decimal(1))
    tokens_for_input = 3000  # 0.9 cents of input leaves 0.1 cent: 66 output tokens
    allowance = plan_turn(
        limits=limits, spend=NONE, prices=PRICES, input_tokens=tokens_for_input, max_tokens=4096, now=NOW
    )
    assert allowance.max_tokens == 66
    with pytest.raises(BudgetExhaustedError) as info:
        # 3320 tokens of input take 0.996 cents: 0.004 cents buy 2 output tokens, fewer than a minimal reply.
        plan_turn(limits=limits, spend=NONE, prices=PRICES, input_tokens=3320, max_tokens=4096, now=NOW)
    assert info.value.error_code() == "budget_insufficient"


def test_cache_write_price_bounds_the_input() -> None:
    prices = Prices(Decimal(3), Decimal(15), cache_read_per_m_usd=Decimal("0.3"), cache_write_per_m_usd=Decimal("3.75"))
    allowance = plan_turn(
        limits=Limits(daily_cents=Decimal(100)), spend=NONE, prices=prices, input_tokens=1000, max_tokens=100, now=NOW
    )
    assert allowance.reserve_cents == Decimal("0.525000")  # 1000 * 3.75 + 100 * 15 per million


@given(
    st.decimals(min_value=0, max_value=1000, places=4),
    st.decimals(min_value=0, max_value=1000, places=4),
    st.integers(min_value=0, max_value=200_000),
    st.integers(min_value=1, max_value=8192),
)
def test_a_reservation_never_exceeds_what_remains(
    budget: Decimal, spent: Decimal, tokens: int, max_tokens: int
) -> None:
    limits = Limits(daily_cents=budget)
    try:
        allowance = plan_turn(
            limits=limits, spend=Spend(spent, spent), prices=PRICES, input_tokens=tokens, max_tokens=max_tokens, now=NOW
        )
    except BudgetExhaustedError:
        return
    assert allowance.reserve_cents <= budget - spent
    assert allowance.max_tokens is not None
    assert MIN_REPLY_TOKENS <= allowance.max_tokens <= max_tokens


def test_input_bound_counts_bytes_not_characters() -> None:
    assert input_tokens_bound(["abc"]) == 3 + 16 + 16
    assert input_tokens_bound(["é"]) == 2 + 16 + 16
    assert input_tokens_bound(["a", "b"]) == 2 + 2 * 16 + 16


def test_disabled_budget_refuses_with_403() -> None:
    check_enabled(Limits())
    with pytest.raises(AiDisabledError) as info:
        check_enabled(Limits(enabled=False))
    assert (info.value.status_code, info.value.code) == (403, "ai_disabled")


def test_rate_window_edges() -> None:
    minute = timedelta(minutes=1)
    check_rate(limit=None, used=10**6, oldest=None, window=minute, now=NOW, scope="per user")
    check_rate(limit=3, used=2, oldest=NOW, window=minute, now=NOW, scope="per user")
    with pytest.raises(RateLimitedError) as info:
        check_rate(limit=3, used=3, oldest=NOW - timedelta(seconds=45), window=minute, now=NOW, scope="per user")
    assert info.value.retry_after == 15
    assert info.value.extra() == {"retryAfter": 15}
    assert "3 messages per minute per user" in info.value.message


def test_zero_rate_limit_refuses_everything() -> None:
    with pytest.raises(RateLimitedError):
        check_rate(limit=0, used=0, oldest=None, window=timedelta(hours=1), now=NOW, scope="for this organization")


def test_reset_times_are_utc_midnights() -> None:
    assert day_reset(NOW) == datetime(2026, 4, 1, tzinfo=UTC)
    assert month_reset(NOW) == datetime(2026, 4, 1, tzinfo=UTC)
    assert month_reset(datetime(2026, 12, 15, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
