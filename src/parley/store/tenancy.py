"""Who a unit of database work runs for.

A `Tenant` is the database's view of a principal: its scope, the organizations it may see and
the user. Repositories filter by it on every query (the only guard on SQLite); on PostgreSQL the
same values are set as transaction-local settings for row-level security.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["organization", "partner", "system"]


@dataclass(frozen=True, slots=True)
class Tenant:
    scope: Scope
    org_ids: frozenset[str]
    user_id: str | None = None

    @classmethod
    def for_org(cls, org_id: str, user_id: str | None = None) -> Tenant:
        """Background work on one organization's rows (turn persistence, eviction)."""
        return cls(scope="organization", org_ids=frozenset({org_id}), user_id=user_id)

    @classmethod
    def system(cls) -> Tenant:
        """Administrative work across organizations (CLI, sweeps that do not know the org)."""
        return cls(scope="system", org_ids=frozenset())

    @property
    def sees_all(self) -> bool:
        return self.scope == "system"

    def can_see(self, org_id: str) -> bool:
        return self.sees_all or org_id in self.org_ids
