"""The Claude price table: lookup, dated ids, overrides, fallback warnings, parsing, cost."""

from __future__ import annotations

from decimal import Decimal

import pytest

from parley.billing.cost import Prices, TokenCounts, cost_cents
from parley.billing.prices import (
    CLAUDE_PRICES,
    DEFAULT_ANTHROPIC_MODEL,
    PRICES_EFFECTIVE_FROM,
    CacheTTL,
    claude_prices,
    parse_price_overrides,
    prices_for,
)

D = Decimal
FALLBACK = Prices(D(7), D(70), D(7), D(7))


class Warnings:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, message: str) -> None:
        self.messages.append(message)


def lookup(
    model: str, overrides: dict[str, Prices] | None = None, *, cache_ttl: CacheTTL = "5m"
) -> tuple[Prices, list[str]]:
    warn = Warnings()
    prices = prices_for(model, overrides=overrides or {}, fallback=FALLBACK, warn=warn, cache_ttl=cache_ttl)
    return prices, warn.messages


SONNET = Prices(
    input_per_m_usd=D(3), output_per_m_usd=D(15), cache_read_per_m_usd=D("0.3"), cache_write_per_m_usd=D("3.75")
)


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("claude-opus-4-5", "5", "25"),
        ("claude-sonnet-4-5", "3", "15"),
        ("claude-haiku-4-5", "1", "5"),
        ("claude-sonnet-4", "3", "15"),
        ("claude-opus-4-1", "15", "75"),
        ("claude-3-5-haiku", "0.80", "4"),
    ],
)
def test_required_models_are_in_the_table(model: str, input_price: str, output_price: str) -> None:
    assert CLAUDE_PRICES[model] == (D(input_price), D(output_price))
    prices, warnings = lookup(model)
    assert (prices.input_per_m_usd, prices.output_per_m_usd) == (D(input_price), D(output_price))
    assert warnings == []


def test_default_model_is_priced_and_the_table_is_dated() -> None:
    assert DEFAULT_ANTHROPIC_MODEL == "claude-sonnet-4-5"
    assert DEFAULT_ANTHROPIC_MODEL in CLAUDE_PRICES
    assert PRICES_EFFECTIVE_FROM[:2] == "20"


@pytest.mark.parametrize(
    "model",
    ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5@20250929", " Claude-Sonnet-4-5 "],
)
def test_dated_and_spelled_variants_resolve_to_the_base_id(model: str) -> None:
    assert lookup(model) == (SONNET, [])


def test_latest_aliases_and_other_dated_ids() -> None:
    haiku, _ = lookup("claude-3-5-haiku-latest")
    assert haiku.output_per_m_usd == D(4)
    opus, _ = lookup("claude-opus-4-1-20250805")
    assert opus.input_per_m_usd == D(15)
    sonnet4, _ = lookup("claude-sonnet-4-20250514")
    assert sonnet4.input_per_m_usd == D(3)


def test_cache_prices_follow_the_multipliers() -> None:
    five, _ = lookup("claude-opus-4-5")
    assert (five.cache_write_per_m_usd, five.cache_read_per_m_usd) == (D("6.25"), D("0.5"))
    hour, _ = lookup("claude-opus-4-5", cache_ttl="1h")
    assert (hour.cache_write_per_m_usd, hour.cache_read_per_m_usd) == (D(10), D("0.5"))
    haiku35, _ = lookup("claude-3-5-haiku")
    assert (haiku35.cache_write_per_m_usd, haiku35.cache_read_per_m_usd) == (D(1), D("0.08"))


def test_unknown_model_warns_once_and_uses_the_fallback() -> None:
    prices, warnings = lookup("claude-opus-9")
    assert prices == FALLBACK
    assert len(warnings) == 1
    assert "claude-opus-9" in warnings[0]
    assert "$7" in warnings[0]


def test_no_prefix_guessing_for_a_newer_model() -> None:
    # "claude-opus-4-6" is not "claude-opus-4": a guessed price would be silently wrong.
    prices, warnings = lookup("claude-opus-4-6")
    assert prices == FALLBACK
    assert len(warnings) == 1


def test_overrides_win_over_the_table_and_apply_to_dated_ids() -> None:
    cheap = claude_prices(D(1), D(2))
    assert lookup("claude-sonnet-4-5", {"claude-sonnet-4-5": cheap}) == (cheap, [])
    assert lookup("claude-sonnet-4-5-20250929", {"claude-sonnet-4-5": cheap}) == (cheap, [])
    # An override for one snapshot only leaves the others on the table price.
    dated = {"claude-sonnet-4-5-20250929": cheap}
    assert lookup("claude-sonnet-4-5-20250929", dated) == (cheap, [])
    assert lookup("claude-sonnet-4-5", dated) == (SONNET, [])


def test_override_prices_an_unknown_model_without_a_warning() -> None:
    local = Prices.flat(D(0), D(0))
    assert lookup("my-gateway-model", {"my-gateway-model": local}) == (local, [])


# --- override parsing -----------------------------------------------------------------------------


def test_parse_two_and_four_number_entries() -> None:
    parsed = parse_price_overrides(" claude-x=3,15 ; claude-y = 0.5 , 2.5 ;claude-z=1,2,3,4;")
    assert parsed["claude-x"] == SONNET
    assert parsed["claude-y"] == Prices(D("0.5"), D("2.5"), D("0.05"), D("0.625"))
    assert parsed["claude-z"] == Prices(
        input_per_m_usd=D(1), output_per_m_usd=D(2), cache_write_per_m_usd=D(3), cache_read_per_m_usd=D(4)
    )


def test_parse_uses_the_ttl_multiplier_and_lowercases_ids() -> None:
    parsed = parse_price_overrides("Claude-X=3,15", cache_ttl="1h")
    assert parsed == {"claude-x": Prices(D(3), D(15), D("0.3"), D(6))}


@pytest.mark.parametrize("value", ["", "  ", ";", " ; ; "])
def test_blank_means_no_overrides(value: str) -> None:
    assert parse_price_overrides(value) == {}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("claude-x", "expected model=input,output"),
        ("claude-x=3", "got 1"),
        ("claude-x=3,15,1", "got 3"),
        ("claude-x=three,15", "input price 'three'"),
        ("claude-x=3,-1", "output price '-1'"),
        ("claude-x=3,NaN", "output price 'NaN'"),
        ("claude-x=3,Infinity", "output price 'Infinity'"),
        ("claude-x=3,", "output price ''"),
        ("=3,15", "is not a model id"),
        ("claude x=3,15", "is not a model id"),
        ("claude-x=3,15;claude-X=1,2", "priced twice"),
    ],
)
def test_parse_errors_name_the_entry(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="price override") as caught:
        parse_price_overrides(value)
    assert fragment in str(caught.value)


# --- cost arithmetic ------------------------------------------------------------------------------


def test_sonnet_turn_with_cache_tokens_costs_exact_cents() -> None:
    prices, _ = lookup("claude-sonnet-4-5-20250929")
    tokens = TokenCounts(input_tokens=1_000, cache_write_tokens=2_000, cache_read_tokens=10_000, output_tokens=500)
    # By hand, USD per million × tokens: 1,000×3 + 2,000×3.75 + 10,000×0.30 + 500×15
    #   = 3,000 + 7,500 + 3,000 + 7,500 = 21,000 → $0.021 = 2.1 cents.
    assert cost_cents(tokens, prices) == D("2.100000")


def test_one_hour_cache_writes_cost_more() -> None:
    prices, _ = lookup("claude-haiku-4-5", cache_ttl="1h")
    tokens = TokenCounts(input_tokens=100, cache_write_tokens=10_000, output_tokens=10)
    # 100×1 + 10,000×2 + 10×5 = 20,150 → $0.02015 = 2.015 cents.
    assert cost_cents(tokens, prices) == D("2.015000")


def test_tiny_haiku_35_turn_keeps_sub_cent_precision() -> None:
    prices, _ = lookup("claude-3-5-haiku")
    tokens = TokenCounts(input_tokens=7, cache_read_tokens=3, output_tokens=1)
    # 7×0.80 + 3×0.08 + 1×4 = 5.6 + 0.24 + 4 = 9.84 → $0.00000984 = 0.000984 cents.
    assert cost_cents(tokens, prices) == D("0.000984")
