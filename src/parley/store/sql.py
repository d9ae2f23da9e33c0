"""Statements built with SQLAlchemy Core from the models' tables, run straight on the database driver.

The schema is written once, in `models.py`. Queries are Core statements over those tables (module
constants, built once), and each is compiled once per dialect into a `Prepared`: the SQL text, the
order of its parameters, and the value conversions of its columns' types (`types.py` and
SQLAlchemy's own: UTC datetimes, exact money, JSON), taken from the types themselves, so there is
no second codec. A `Tx` runs them on the driver: `sqlite3` inline on the event loop, or asyncpg.

Why not an ORM session or an engine connection: a turn runs about ten statements that each take
microseconds in the database, and through those layers each costs a hundred times that in Python
(`docs/performance.md`).

Imports: standard library and SQLAlchemy (statement building and compiling only).
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, cast

import orjson
from sqlalchemy import Boolean, ClauseElement, ColumnDefault, ColumnElement, Float, Insert, Numeric, String, bindparam
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import TypedReturnsRows
from sqlalchemy.types import TypeDecorator, TypeEngine

if TYPE_CHECKING:
    import asyncpg

Ts = TypeVarTuple("Ts")
T = TypeVar("T")
Params = Mapping[str, Any]
Processor = Callable[[Any], Any]
Record = dict[str, Any]


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# JSON columns cross as text, written and read with orjson (the standard library's json is several
# times slower, and every turn stores its messages' parts).
DIALECTS: dict[str, Dialect] = {
    # sqlite3 reads parameters by name: a call's mapping goes to the driver as it is.
    "sqlite": sqlite_dialect.dialect(paramstyle="named", json_serializer=_json_text, json_deserializer=orjson.loads),
    "postgresql": asyncpg_dialect.dialect(json_serializer=_json_text, json_deserializer=orjson.loads),  # type: ignore[no-untyped-call]
}


@dataclass(frozen=True, slots=True)
class Prepared:
    """One statement compiled for one dialect."""

    statement: ClauseElement  # held so the cache key (its id) is never reused
    sql: str
    names: tuple[str, ...]  # parameter names in positional order; empty where the driver takes names
    defaults: dict[str, Any]  # literal values bound in the statement, and column defaults of inserts
    binds: tuple[tuple[str, Processor], ...]  # (parameter, conversion to the stored form)
    results: tuple[tuple[int, Processor], ...]  # (column, conversion from the stored form)
    keys: tuple[str, ...]  # the result columns' names

    def arguments(self, params: Params | None) -> dict[str, Any]:
        """The parameters by name, defaults filled in and values in their stored forms."""
        values: dict[str, Any] = {**self.defaults, **params} if params else dict(self.defaults)
        for name, convert in self.binds:
            value = values.get(name)
            if value is not None:
                values[name] = convert(value)
        return values

    def convert(self, row: Sequence[Any]) -> tuple[Any, ...]:
        if not self.results:
            return tuple(row)
        out = list(row)
        for i, convert in self.results:
            out[i] = convert(out[i])
        return tuple(out)


_prepared: dict[tuple[int, str], Prepared] = {}


def prepare(statement: ClauseElement, dialect: str) -> Prepared:
    """The statement compiled for `dialect` (once; cached by statement identity)."""
    found = _prepared.get((id(statement), dialect))
    if found is None:
        found = _prepared[(id(statement), dialect)] = _compile(statement, DIALECTS[dialect])
    return found


def _compile(statement: ClauseElement, dialect: Dialect) -> Prepared:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    if "POSTCOMPILE" in compiled.string:  # `IN` over a list: rendered per call, which a prepared statement is not
        raise ValueError(f"a statement with an expanding IN cannot be prepared once: {compiled.string}")
    names = tuple(compiled.positiontup or ()) if compiled.positional else ()
    # Every parameter has a value: None unless the statement binds a literal (or an insert's
    # column has a default, below); a call's own parameters override these.
    defaults: dict[str, Any] = {}
    for bind, name in compiled.bind_names.items():
        if name.isidentifier():  # not an unrendered alias of a rendered parameter
            value = None if bind.required else bind.value
            if value is not None or name not in defaults:
                defaults[name] = value
    if isinstance(statement, Insert):
        for column in statement.table.columns:
            default = column.default
            if isinstance(default, ColumnDefault) and default.is_scalar and defaults.get(column.key) is None:
                defaults[column.key] = default.arg
    binds: dict[str, Processor] = {}  # one conversion per name, however often the name is used
    for bind, name in compiled.bind_names.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            binds.setdefault(name, processor)
    results = []
    columns = list(getattr(statement, "exported_columns", ()))
    for i, column in enumerate(columns):
        processor = column.type.dialect_impl(dialect).result_processor(dialect, _type_code(column.type, dialect))
        if processor is not None:
            results.append((i, processor))
    keys = tuple(str(column.key) for column in columns)
    return Prepared(statement, compiled.string, names, defaults, tuple(binds.items()), tuple(results), keys)


def _type_code(type_: TypeEngine[Any], dialect: Dialect) -> int | None:
    """The driver's code for a result column, where a processor needs it: asyncpg's numeric
    processor picks Decimal or float by the PostgreSQL type it was given (numeric is 1700)."""
    if dialect.name == "postgresql" and isinstance(type_, Numeric | TypeDecorator):
        impl = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
        if isinstance(impl, Numeric):
            return 701 if isinstance(impl, Float) else 1700
    return None


class Tx(ABC):
    """One transaction on the driver. Never commits: the unit of work that made it does."""

    __slots__ = ()
    dialect: str

    async def rows(self, statement: TypedReturnsRows[*Ts], params: Params | None = None) -> list[tuple[*Ts]]:
        prepared = prepare(statement, self.dialect)
        convert = prepared.convert
        return [convert(row) for row in await self._fetch(prepared, params)]

    async def row(self, statement: TypedReturnsRows[*Ts], params: Params | None = None) -> tuple[*Ts] | None:
        prepared = prepare(statement, self.dialect)
        found = await self._fetch(prepared, params)
        return prepared.convert(found[0]) if found else None

    async def records(self, statement: TypedReturnsRows[*Ts], params: Params | None = None) -> list[Record]:
        """Rows as column name -> value (for whole rows shown as they are stored)."""
        prepared = prepare(statement, self.dialect)
        keys, convert = prepared.keys, prepared.convert
        return [dict(zip(keys, convert(row), strict=True)) for row in await self._fetch(prepared, params)]

    async def value(self, statement: TypedReturnsRows[T], params: Params | None = None) -> T | None:
        """The first column of the first row (None when there is no row)."""
        found = await self.row(statement, params)
        return found[0] if found is not None else None

    async def run(self, statement: ClauseElement, params: Params | None = None) -> int:
        """Run a write; the number of rows it touched."""
        return await self._execute(prepare(statement, self.dialect), params)

    async def run_many(self, statement: ClauseElement, params: Sequence[Params]) -> None:
        prepared = prepare(statement, self.dialect)
        for one in params:
            await self._execute(prepared, one)

    @abstractmethod
    async def _fetch(self, prepared: Prepared, params: Params | None) -> Sequence[Sequence[Any]]: ...

    @abstractmethod
    async def _execute(self, prepared: Prepared, params: Params | None) -> int: ...


class SqliteTx(Tx):
    """On a `sqlite3` connection, inline: no await in here ever suspends."""

    __slots__ = ("_conn",)
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def _fetch(self, prepared: Prepared, params: Params | None) -> Sequence[Sequence[Any]]:
        return self._conn.execute(prepared.sql, prepared.arguments(params)).fetchall()

    async def _execute(self, prepared: Prepared, params: Params | None) -> int:
        return self._conn.execute(prepared.sql, prepared.arguments(params)).rowcount


class PostgresTx(Tx):
    """On an asyncpg connection (its statement cache prepares each SQL text once per connection)."""

    __slots__ = ("_conn",)
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def _fetch(self, prepared: Prepared, params: Params | None) -> Sequence[Sequence[Any]]:
        values = prepared.arguments(params)
        return await self._conn.fetch(prepared.sql, *[values[name] for name in prepared.names])  # type: ignore[no-any-return]

    async def _execute(self, prepared: Prepared, params: Params | None) -> int:
        values = prepared.arguments(params)
        status: str = await self._conn.execute(prepared.sql, *[values[name] for name in prepared.names])
        count = status.rpartition(" ")[2]  # "UPDATE 3", "INSERT 0 1", "DELETE 0"
        return int(count) if count.isdigit() else 0


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
        return orjson.dumps(value).decode()


class member_of(ColumnElement[bool]):
    """`column` is one of the ids in the list parameter `name`: `IN` over a list, in a form that is
    prepared once whatever the list's length (an expanding `IN` is rendered per call)."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.param = bindparam(name, type_=_IdList())


@compiles(member_of, "sqlite")
def _member_of_sqlite(element: member_of, compiler: SQLCompiler, **kw: Any) -> str:
    column, param = compiler.process(element.column, **kw), compiler.process(element.param, **kw)
    return f"({column} IN (SELECT value FROM json_each({param})))"


@compiles(member_of, "postgresql")
def _member_of_postgres(element: member_of, compiler: SQLCompiler, **kw: Any) -> str:
    column, param = compiler.process(element.column, **kw), compiler.process(element.param, **kw)
    return f"{column} = ANY({param})"


class utc_bucket(ColumnElement[str]):
    """The UTC hour or day a timestamp falls in, as ISO 8601 text (`2030-01-15T12:00:00Z`): the
    same text on both databases, so a time series groups by it."""

    inherit_cache = True
    type = String()

    def __init__(self, column: ColumnElement[Any], unit: str) -> None:
        if unit not in ("hour", "day"):
            raise ValueError(f"unknown bucket {unit!r}")
        self.column = column
        self.unit = unit


@compiles(utc_bucket, "sqlite")
def _utc_bucket_sqlite(element: utc_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    # Stored as naive UTC text: "2030-01-15 12:34:56.000000" (types.UTCDateTime).
    column = compiler.process(element.column, **kw)
    if element.unit == "day":
        return f"(substr({column}, 1, 10) || 'T00:00:00Z')"
    return f"(substr({column}, 1, 10) || 'T' || substr({column}, 12, 2) || ':00:00Z')"


@compiles(utc_bucket, "postgresql")
def _utc_bucket_postgres(element: utc_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    pattern = 'YYYY-MM-DD"T00:00:00Z"' if element.unit == "day" else 'YYYY-MM-DD"T"HH24":00:00Z"'
    return f"to_char({column} AT TIME ZONE 'UTC', '{pattern}')"
