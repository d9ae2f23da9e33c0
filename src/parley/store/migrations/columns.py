"""Column and index definitions that the revisions written in Alembic's table style repeat.

Revisions are history: what they emit must never change, so a helper here is only ever added
to, never edited in a way that changes the SQL of a revision that uses it. Imported by
`versions/*`; imports alembic, SQLAlchemy and `parley.store.types`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from parley.store.types import UTCDateTime


def ident(name: str = "id", *, nullable: bool = False) -> sa.Column[Any]:
    """An id (a UUID as 36 characters of text): a primary key, or a reference to one."""
    return sa.Column(name, sa.String(length=36), nullable=nullable)


def timestamp(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def token_counts(prefix: str = "", *, nullable: bool = False) -> list[sa.Column[Any]]:
    """The four token counts of a reply, or of a sum of replies (`prefix` "total_")."""
    kinds = ("input", "output", "cache_read", "cache_write")
    return [sa.Column(f"{prefix}{kind}_tokens", sa.Integer(), nullable=nullable) for kind in kinds]


def references(column: str, target: str) -> sa.ForeignKeyConstraint:
    """`column` holds the id of a row of `target` ("table.column")."""
    return sa.ForeignKeyConstraint([column], [target])


def create_column_indexes(table: str, *columns: str) -> None:
    """An index per column, named as SQLAlchemy names an `index=True` column: `ix_<table>_<column>`."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in columns:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def drop_column_indexes(table: str, *columns: str) -> None:
    """Undo `create_column_indexes(table, *columns)`, in reverse order."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in reversed(columns):
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
