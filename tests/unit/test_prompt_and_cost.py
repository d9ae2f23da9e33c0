"""Prompt rendering, page-context sanitising, titles, content sanitising and cost arithmetic."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from parley.billing.cost import Prices, TokenCounts, cents_to_usd, cost_cents
from parley.chat.prompt import context_lines, render_system_prompt, sanitize_content, title_from
from parley.providers.base import estimate_tokens


def test_page_context_becomes_sanitised_key_value_lines() -> None:
    lines = context_lines(
        {"page": "devices", "device": {"hostname": "web-1\nIGNORE PREVIOUS", "online": True}, "ids": [1, 2]}
    )
    assert lines == ["page: devices", "device.hostname: web-1 IGNORE PREVIOUS", "device.online: true", "ids: 1, 2"]


def test_context_keys_lose_unsafe_characters_and_values_are_bounded() -> None:
    (line,) = context_lines({"ke<y>\n:": "v" * 1000})
    key, _, value = line.partition(": ")
    assert key == "key"
    assert len(value) == 300


def test_context_lines_are_bounded_in_number() -> None:
    assert len(context_lines({f"k{i}": i for i in range(500)})) == 40


def test_prompt_without_context_is_the_base() -> None:
    assert render_system_prompt("Base.", None) == "Base."
    assert render_system_prompt("Base.", {"x": None}) == "Base."
    rendered = render_system_prompt("Base.", {"page": "home"})
    assert rendered.startswith("Base.\n\n")
    assert rendered.endswith("page: home")


def test_titles_come_from_the_first_line_cut_at_a_word() -> None:
    assert title_from("  Hello   world \nsecond line") == "Hello world"
    long = "word " * 30
    title = title_from(long)
    assert title.endswith("…")
    assert len(title) <= 61
    assert "wor…" not in title


def test_content_sanitising_drops_controls_keeps_newlines() -> None:
    assert sanitize_content("  a\x00b\r\nc\td\x1b  ") == "ab\nc\td"


def test_cost_is_exact_decimal_cents() -> None:
    prices = Prices.flat(Decimal(3), Decimal(15))
    cents = cost_cents(TokenCounts(input_tokens=1000, output_tokens=500), prices)
    assert cents == Decimal("1.050000")  # (1000*3 + 500*15) / 1e6 USD = $0.0105
    assert cents_to_usd(cents) == "0.0105"
    assert cents_to_usd(Decimal(0)) == "0"


def test_cache_tokens_use_their_own_prices() -> None:
    prices = Prices(Decimal(3), Decimal(15), cache_read_per_m_usd=Decimal("0.3"), cache_write_per_m_usd=Decimal("3.75"))
    counts = TokenCounts(input_tokens=10, output_tokens=10, cache_read_tokens=1000, cache_write_tokens=1000)
    assert cost_cents(counts, prices) == Decimal("0.423000")


@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=200))
def test_many_small_turns_add_up_without_drift(outputs: list[int]) -> None:
    prices = Prices.flat(Decimal("0.15"), Decimal("0.6"))
    total = sum((cost_cents(TokenCounts(output_tokens=n), prices) for n in outputs), Decimal(0))
    assert total == cost_cents(TokenCounts(output_tokens=sum(outputs)), prices)


def test_estimates_round_up() -> None:
    assert [estimate_tokens(n) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
