"""Who a unit of database work runs for, and the SQL filter that says so.

A `Tenant` is the database's view of a principal: its scope, the organizations it may see and
the user. Queries filter by it (`in_orgs`, the only guard on SQLite); on PostgreSQL the same
values are set as transaction-local settings for row-level security (`Database.unit`).

Imports: standard library and SQLAlchemy (statement building only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement

from parley.store.sql import member_of

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

    @property
    def org_list(self) -> str:
        """The organizations as row-level security reads them: comma-separated, or `*` for all."""
        return "*" if self.sees_all else ",".join(sorted(self.org_ids))

    def can_see(self, org_id: str) -> bool:
        return self.sees_all or org_id in self.org_ids

    def filter_params(self) -> dict[str, Any]:
        """The parameter `in_orgs` reads (nothing when the tenant sees every organization)."""
        return {} if self.sees_all else {"org_ids": sorted(self.org_ids)}


def in_orgs(column: ColumnElement[Any]) -> ColumnElement[bool]:
    """`column` is one of the tenant's organizations (parameter `org_ids`, from `filter_params`)."""
    return member_of(column, "org_ids")
