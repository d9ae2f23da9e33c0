"""Budgets and reservations; an index for rate-limit windows; RLS on both new tables.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:40:08.920487
"""

import sqlalchemy as sa
from alembic import op

from parley.store.types import Money, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ai_budgets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("daily_budget_cents", Money(), nullable=True),
        sa.Column("monthly_budget_cents", Money(), nullable=True),
        sa.Column("max_turns_per_session", sa.Integer(), nullable=True),
        sa.Column("messages_per_minute_per_user", sa.Integer(), nullable=True),
        sa.Column("messages_per_hour_per_org", sa.Integer(), nullable=True),
        sa.Column("allowed_models", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id"),
    )
    op.create_table(
        "ai_budget_reservations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("amount_cents", Money(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["ai_sessions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ai_budget_reservations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ai_budget_reservations_org_id"), ["org_id"], unique=False)

    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.create_index("ix_ai_messages_role_created", ["role", "created_at"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        for table in ("ai_budgets", "ai_budget_reservations"):
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY parley_org_isolation ON {table} FOR ALL "
                "USING (parley_org_visible(org_id)) WITH CHECK (parley_org_visible(org_id))"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("ai_budgets", "ai_budget_reservations"):
            op.execute(f"DROP POLICY IF EXISTS parley_org_isolation ON {table}")
    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_messages_role_created")

    with op.batch_alter_table("ai_budget_reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_budget_reservations_org_id"))

    op.drop_table("ai_budget_reservations")
    op.drop_table("ai_budgets")
