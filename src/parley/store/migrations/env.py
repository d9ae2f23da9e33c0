"""Alembic environment: runs on the connection handed in by `Database.migrate`."""

from __future__ import annotations

from alembic import context

from parley.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always driven through Database.migrate
    raise RuntimeError("run migrations with `parley migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
