"""Claude list prices and the lookup that turns a model id into `Prices`.

The table holds input and output prices (USD per million tokens) per model; cache prices are
derived with Anthropic's multipliers on the input price: a cache write costs 1.25× for the
5-minute TTL and 2× for the 1-hour TTL, a cache read 0.1×. `prices_for` resolves an id (exact, or
a dated / `-latest` variant of a known id), lets configured overrides win, and for an unknown id
warns and uses the caller's fallback: a model is never billed at $0 without a warning.
`parse_price_overrides` reads the override format `model=input,output[,cache_write,cache_read];…`.

Not modelled: the long-context tier (Sonnet 4 / 4.5 above 200k input tokens cost more) and batch
discounts. Pure: no I/O. Imports: standard library, parley.billing.cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Literal

from parley.billing.cost import Prices

__all__ = [
    "CACHE_READ_MULTIPLIER",
    "CACHE_WRITE_MULTIPLIERS",
    "CLAUDE_CONTEXT_WINDOW",
    "CLAUDE_PRICES",
    "DEFAULT_ANTHROPIC_MODEL",
    "PRICES_EFFECTIVE_FROM",
    "CacheTTL",
    "claude_context_window",
    "claude_prices",
    "parse_price_overrides",
    "prices_for",
]

CacheTTL = Literal["5m", "1h"]

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-5"

# Anthropic's published list prices as of this date (Claude Opus 4.5 launch, which cut Opus to
# $5/$25). Re-check https://www.anthropic.com/pricing when adding a model or before relying on
# these for invoices; operators can override any entry without a release.
PRICES_EFFECTIVE_FROM = "2025-11-24"

CACHE_WRITE_MULTIPLIERS: Mapping[CacheTTL, Decimal] = {"5m": Decimal("1.25"), "1h": Decimal(2)}
CACHE_READ_MULTIPLIER = Decimal("0.1")

# (input, output) USD per million tokens, by undated model id (aliases included).
CLAUDE_PRICES: Mapping[str, tuple[Decimal, Decimal]] = {
    "claude-opus-4-5": (Decimal(5), Decimal(25)),
    "claude-opus-4-1": (Decimal(15), Decimal(75)),
    "claude-opus-4": (Decimal(15), Decimal(75)),
    "claude-opus-4-0": (Decimal(15), Decimal(75)),
    "claude-sonnet-4-5": (Decimal(3), Decimal(15)),
    "claude-sonnet-4": (Decimal(3), Decimal(15)),
    "claude-sonnet-4-0": (Decimal(3), Decimal(15)),
    "claude-3-7-sonnet": (Decimal(3), Decimal(15)),
    "claude-haiku-4-5": (Decimal(1), Decimal(5)),
    "claude-3-5-haiku": (Decimal("0.80"), Decimal(4)),
    "claude-3-haiku": (Decimal("0.25"), Decimal("1.25")),
}

# A snapshot date ("-20250929", Vertex-style "@20250929") or "-latest" after the model id.
_VARIANT_SUFFIX = re.compile(r"(?:[-@]\d{8}|-latest)$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$")


def claude_prices(input_per_m_usd: Decimal, output_per_m_usd: Decimal, *, cache_ttl: CacheTTL = "5m") -> Prices:
    """Prices with cache write and read derived from the input price by Anthropic's multipliers."""
    return Prices(
        input_per_m_usd=input_per_m_usd,
        output_per_m_usd=output_per_m_usd,
        cache_read_per_m_usd=input_per_m_usd * CACHE_READ_MULTIPLIER,
        cache_write_per_m_usd=input_per_m_usd * CACHE_WRITE_MULTIPLIERS[cache_ttl],
    )


# Every Claude model of the table sees 200,000 tokens at once (prompt and reply); the larger
# windows some offer need a beta header parley does not send.
CLAUDE_CONTEXT_WINDOW = 200_000


def claude_context_window(model: str) -> int | None:
    """The window of a Claude model of the table (a dated or -latest variant too), else None."""
    return CLAUDE_CONTEXT_WINDOW if any(key in CLAUDE_PRICES for key in _candidates(model)) else None


def _candidates(model: str) -> list[str]:
    """The id as given, then (if it is a dated or -latest variant) the undated id."""
    exact = model.strip()
    lowered = exact.lower()
    undated = _VARIANT_SUFFIX.sub("", lowered)
    return list(dict.fromkeys((exact, lowered, undated)))


def prices_for(
    model: str,
    *,
    overrides: Mapping[str, Prices],
    fallback: Prices,
    warn: Callable[[str], None],
    cache_ttl: CacheTTL = "5m",
) -> Prices:
    """The prices of `model`: an override, else the table, else `fallback` after one `warn`.

    Call it once per configured model (at start-up), not per turn: it warns on every call for
    an unknown id. `cache_ttl` selects the cache-write multiplier for table prices; overrides
    are complete `Prices` and are returned as given.
    """
    candidates = _candidates(model)
    for key in candidates:
        if key in overrides:
            return overrides[key]
    for key in candidates:
        if key in CLAUDE_PRICES:
            input_price, output_price = CLAUDE_PRICES[key]
            return claude_prices(input_price, output_price, cache_ttl=cache_ttl)
    warn(
        f"No price is known for model {model!r}; billing it at the fallback prices "
        f"(input ${fallback.input_per_m_usd}/M, output ${fallback.output_per_m_usd}/M tokens). "
        "Add a price override for it."
    )
    return fallback


def _price(entry: str, label: str, text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise ValueError(f"price override {entry!r}: {label} {text.strip()!r} is not a non-negative number")
    return value


def parse_price_overrides(value: str, *, cache_ttl: CacheTTL = "5m") -> dict[str, Prices]:
    """Parse `model=input,output[,cache_write,cache_read];…` (USD per million tokens).

    With two numbers the cache prices are derived from the input price (write multiplier by
    `cache_ttl`); with four they are taken as given. Blank input means no overrides. Raises
    ValueError naming the offending entry.
    """
    overrides: dict[str, Prices] = {}
    for raw in value.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        model, sep, numbers = entry.partition("=")
        model = model.strip().lower()  # ids are lower-case; prices_for also tries the id lowered
        if not sep:
            raise ValueError(f"price override {entry!r}: expected model=input,output (USD per million tokens)")
        if not _MODEL_ID.match(model):
            raise ValueError(f"price override {entry!r}: {model!r} is not a model id")
        if model in overrides:
            raise ValueError(f"price override {entry!r}: model {model!r} is priced twice")
        fields = numbers.split(",")
        if len(fields) not in (2, 4):
            raise ValueError(
                f"price override {entry!r}: expected 2 prices (input,output) or 4 "
                f"(input,output,cache_write,cache_read), got {len(fields)}"
            )
        labels = ("input price", "output price", "cache write price", "cache read price")
        prices = [_price(entry, label, text) for label, text in zip(labels, fields, strict=False)]
        if len(prices) == 2:
            overrides[model] = claude_prices(prices[0], prices[1], cache_ttl=cache_ttl)
        else:
            overrides[model] = Prices(
                input_per_m_usd=prices[0],
                output_per_m_usd=prices[1],
                cache_write_per_m_usd=prices[2],
                cache_read_per_m_usd=prices[3],
            )
    return overrides
