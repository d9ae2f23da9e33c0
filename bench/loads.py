"""The loads of `make bench`: reply shape at the upstream, concurrency, and bounds.

Turn counts are the most a run does; `soft_seconds` stops starting new turns (slow peers), and
`hard_seconds` cuts whatever still runs (counted apart, not as failures).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Load:
    key: str
    title: str
    tokens: int  # per reply
    delay: float  # seconds between tokens
    first_delay: float  # seconds before the first token
    concurrency: int
    turns: int
    soft_seconds: float
    hard_seconds: float


LOADS = (
    Load("saturation", "saturation: 256-token replies, no delay, C=50", 256, 0.0, 0.0, 50, 3000, 10, 30),
    Load("short", "short turns: 16-token replies, no delay, C=50", 16, 0.0, 0.0, 50, 4000, 10, 30),
    Load("paced100", "paced: 32 tokens 20 ms apart, C=100", 32, 0.02, 0.02, 100, 2000, 10, 30),
    Load("paced500", "paced: 32 tokens 20 ms apart, C=500", 32, 0.02, 0.02, 500, 4000, 12, 40),
)
