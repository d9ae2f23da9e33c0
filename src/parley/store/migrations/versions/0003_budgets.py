"""Budgets and reservations; an index for rate-limit windows; RLS on both new tables.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:40:08.920487
"""

import sqlalchemy as sa
from alembic import op

from parley.store.migrations.columns import create_column_indexes, drop_column_indexes, ident, references, timestamp
from parley.store.migrations.rls import drop_org_isolation, isolate_by_org
from parley.store.types import Money

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TENANT_TABLES = ("ai_budgets", "ai_budget_reservations")


def upgrade() -> None:
    op.create_table(
        "ai_budgets",
        ident(),
        ident("org_id"),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("daily_budget_cents", Money(), nullable=True),
        sa.Column("monthly_budget_cents", Money(), nullable=True),
        sa.Column("max_turns_per_session", sa.Integer(), nullable=True),
        sa.Column("messages_per_minute_per_user", sa.Integer(), nullable=True),
        sa.Column("messages_per_hour_per_org", sa.Integer(), nullable=True),
        sa.Column("allowed_models", sa.JSON(), nullable=True),
        timestamp("created_at"),
        timestamp("updated_at"),
        references("org_id", "organizations.id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id"),
    )
    op.create_table(
        "ai_budget_reservations",
        ident(),
        ident("org_id"),
        ident("session_id"),
        sa.Column("amount_cents", Money(), nullable=False),
        timestamp("created_at"),
        timestamp("expires_at"),
        references("org_id", "organizations.id"),
        references("session_id", "ai_sessions.id"),
        sa.PrimaryKeyConstraint("id"),
    )
    create_column_indexes("ai_budget_reservations", "org_id")

    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.create_index("ix_ai_messages_role_created", ["role", "created_at"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        isolate_by_org(TENANT_TABLES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        drop_org_isolation(TENANT_TABLES)
    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_messages_role_created")

    drop_column_indexes("ai_budget_reservations", "org_id")

    op.drop_table("ai_budget_reservations")
    op.drop_table("ai_budgets")
