"""Who a unit of database work runs for, and the SQL filter that says so.

A `Tenant` is the database's view of a principal: its scope, the organizations it may see and
the user. Queries filter by it (`in_orgs`, the only guard on SQLite); on PostgreSQL the same
values are set as transaction-local settings for row-level security (`Database.unit`).

Imports: standard library and SQLAlchemy (statement building only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Boolean, ColumnElement, Dialect, String, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator, TypeEngine

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


class _IdList(TypeDecorator[list[str]]):
    """A list of ids as one parameter: a PostgreSQL array, or JSON text that SQLite's json_each reads."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(String()))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: list[str] | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return json.dumps(value)


class in_orgs(ColumnElement[bool]):
    """`column` is one of the tenant's organizations (parameter `org_ids`, from `filter_params`)."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.param = bindparam("org_ids", type_=_IdList())


@compiles(in_orgs, "sqlite")
def _in_orgs_sqlite(element: in_orgs, compiler: SQLCompiler, **kw: Any) -> str:
    column, param = compiler.process(element.column, **kw), compiler.process(element.param, **kw)
    return f"({column} IN (SELECT value FROM json_each({param})))"


@compiles(in_orgs, "postgresql")
def _in_orgs_postgres(element: in_orgs, compiler: SQLCompiler, **kw: Any) -> str:
    column, param = compiler.process(element.column, **kw), compiler.process(element.param, **kw)
    return f"{column} = ANY({param})"
