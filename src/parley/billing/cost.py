"""Prices and the cost of a turn, in exact decimal cents.

Prices are USD per million tokens (as operators read them on price pages); costs are cents with
six decimal places, so thousands of tiny turns add up without drift. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_PLACES = Decimal("0.000001")
_CENTS_PER_USD = Decimal(100)
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Prices:
    input_per_m_usd: Decimal = Decimal(0)
    output_per_m_usd: Decimal = Decimal(0)
    cache_read_per_m_usd: Decimal = Decimal(0)
    cache_write_per_m_usd: Decimal = Decimal(0)

    @classmethod
    def flat(cls, input_per_m_usd: Decimal, output_per_m_usd: Decimal) -> Prices:
        """OpenAI-compatible servers: cached prompt tokens billed as plain input."""
        return cls(input_per_m_usd, output_per_m_usd, input_per_m_usd, input_per_m_usd)


@dataclass(frozen=True, slots=True)
class TokenCounts:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            estimated=self.estimated or other.estimated,
        )

    @property
    def is_zero(self) -> bool:
        return not (self.input_tokens or self.output_tokens or self.cache_read_tokens or self.cache_write_tokens)


def cost_cents(tokens: TokenCounts, prices: Prices) -> Decimal:
    usd_per_m = (
        tokens.input_tokens * prices.input_per_m_usd
        + tokens.output_tokens * prices.output_per_m_usd
        + tokens.cache_read_tokens * prices.cache_read_per_m_usd
        + tokens.cache_write_tokens * prices.cache_write_per_m_usd
    )
    return (usd_per_m * _CENTS_PER_USD / _MILLION).quantize(_PLACES)


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain text without trailing zeros or exponent: '100', '0.0075' (for the wire)."""
    return format(value.normalize(), "f") if value else "0"


def cents_to_usd(cents: Decimal) -> str:
    """Exact decimal string of dollars, for the wire (never a float)."""
    return decimal_text((cents / _CENTS_PER_USD).quantize(Decimal("0.00000001")))
