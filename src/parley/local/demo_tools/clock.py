"""The current date and time in an IANA time zone, from the system clock and `zoneinfo`.

May import: the standard library and parley.local.demo_tools.errors.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from parley.local.demo_tools.errors import DemoToolError

MAX_ZONE_NAME = 64
EXAMPLE_ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTime:
    datetime: str  # ISO 8601 to the second, with the offset: 2025-03-30T14:05:09+02:00
    timezone: str  # the IANA name: Europe/Paris
    abbreviation: str  # what the zone calls this moment: CEST
    utc_offset: str  # +02:00
    weekday: str  # Sunday

    def as_text(self) -> str:
        return f"{self.datetime} ({self.weekday}) in {self.timezone}: {self.abbreviation}, UTC offset {self.utc_offset}"


def now_in(zone_name: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> LocalTime:
    """The time now in the zone called `zone_name`; an unknown name is a `DemoToolError`."""
    zone = _zone(zone_name.strip())
    moment = clock().astimezone(zone).replace(microsecond=0)
    return LocalTime(
        datetime=moment.isoformat(),
        timezone=zone.key,
        abbreviation=moment.tzname() or zone.key,
        utc_offset=_offset_text(moment),
        weekday=moment.strftime("%A"),
    )


def _zone(name: str) -> zoneinfo.ZoneInfo:
    if 0 < len(name) <= MAX_ZONE_NAME:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            # ValueError: a key that is not a relative path; OSError: a directory such as "Europe".
            pass
        # People write "utc" or "europe/paris"; accept any capitalization of a real name.
        key = _keys_by_folded_name().get(name.casefold())
        if key is not None:
            return zoneinfo.ZoneInfo(key)
    examples = ", ".join(repr(example) for example in EXAMPLE_ZONES)
    raise DemoToolError(f"unknown time zone {name[:MAX_ZONE_NAME]!r}: use an IANA name such as {examples}")


@functools.cache
def _keys_by_folded_name() -> dict[str, str]:
    return {key.casefold(): key for key in zoneinfo.available_timezones()}


def _offset_text(moment: datetime) -> str:
    offset = moment.utcoffset()
    assert offset is not None  # `moment` was made aware by astimezone
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"
