"""The wall clock the chat services default to; tests hand them their own (a constructor argument).

Imports the standard library only.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)
