"""The parley targets of `make bench`: one deployment shape each (database, Redis, worker processes).

Every parley target gets its own database (a SQLite file, or a database of the run's PostgreSQL
cluster) seeded the same way, and runs `python -m parley serve` against the same upstream. Keys are
what `--targets` takes; titles are the table's column headers (`parley-x2` may be written
`parley×2`). The defaults are what keeps a full run, LiteLLM included, within about eight minutes
on a shared two-core machine; `--targets all` adds the others.

Imports: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class ParleyTarget:
    key: str
    title: str
    database: Literal["sqlite", "postgres"]
    redis: bool  # PARLEY_REDIS_URL set to the run's Redis
    workers: int  # `parley serve --workers`
    default: bool  # in a run without --targets

    @property
    def slug(self) -> str:
        """A name for its database and data directory."""
        return self.key.replace("-", "_").replace("+", "_")


PARLEY_TARGETS = (
    ParleyTarget("parley", "parley", "sqlite", redis=False, workers=1, default=True),
    ParleyTarget("parley+redis", "parley+redis", "sqlite", redis=True, workers=1, default=True),
    ParleyTarget("parley-x2", "parley×2", "sqlite", redis=False, workers=2, default=False),
    ParleyTarget("parley-pg", "parley-pg", "postgres", redis=False, workers=1, default=True),
    ParleyTarget("parley-pg+redis", "parley-pg+redis", "postgres", redis=True, workers=1, default=False),
    ParleyTarget("parley-pg-x2", "parley-pg×2", "postgres", redis=False, workers=2, default=False),
)
OTHER_TARGETS = ("direct", "relay", "litellm")


def parley_target(key: str) -> ParleyTarget | None:
    key = key.replace("×", "-x")
    return next((t for t in PARLEY_TARGETS if t.key == key), None)


def default_targets() -> str:
    keys = ["direct", "relay", *(t.key for t in PARLEY_TARGETS if t.default), "litellm"]
    return ",".join(keys)


def all_targets() -> str:
    return ",".join(["direct", "relay", *(t.key for t in PARLEY_TARGETS), "litellm"])
