"""Initial schema: tenants, tokens, sessions, messages, cost usage.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 19:13:06.357970
"""

import sqlalchemy as sa
from alembic import op

from parley.store.migrations.columns import (
    create_column_indexes,
    drop_column_indexes,
    ident,
    references,
    timestamp,
    token_counts,
)
from parley.store.types import Money

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        ident(),
        sa.Column("name", sa.String(length=255), nullable=False),
        ident("partner_id", nullable=True),
        timestamp("created_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    create_column_indexes("organizations", "partner_id")

    op.create_table(
        "ai_cost_usage",
        ident(),
        ident("org_id"),
        sa.Column("period", sa.String(length=10), nullable=False),
        sa.Column("period_key", sa.String(length=10), nullable=False),
        *token_counts(),
        sa.Column("total_cost_cents", Money(), nullable=False),
        sa.Column("session_count", sa.Integer(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        timestamp("updated_at"),
        references("org_id", "organizations.id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("org_id", "period", "period_key", name="uq_ai_cost_usage_period"),
    )
    create_column_indexes("ai_cost_usage", "org_id")

    op.create_table(
        "users",
        ident(),
        ident("org_id", nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        timestamp("created_at"),
        references("org_id", "organizations.id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    create_column_indexes("users", "org_id")

    op.create_table(
        "ai_sessions",
        ident(),
        ident("org_id"),
        ident("user_id", nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=True),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("context_snapshot", sa.JSON(), nullable=True),
        *token_counts("total_"),
        sa.Column("total_cost_cents", Money(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("max_turns", sa.Integer(), nullable=False),
        timestamp("last_activity_at"),
        timestamp("created_at"),
        timestamp("updated_at"),
        ident("lease_token", nullable=True),
        timestamp("lease_expires_at", nullable=True),
        references("org_id", "organizations.id"),
        references("user_id", "users.id"),
        sa.PrimaryKeyConstraint("id"),
    )
    create_column_indexes("ai_sessions", "org_id", "status")
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_ai_sessions_user_activity", ["user_id", "last_activity_at"], unique=False)

    op.create_table(
        "api_tokens",
        ident(),
        ident("user_id"),
        ident("org_id", nullable=True),
        ident("partner_id", nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("can_write", sa.Boolean(), nullable=False),
        timestamp("created_at"),
        timestamp("expires_at", nullable=True),
        timestamp("revoked_at", nullable=True),
        timestamp("last_used_at", nullable=True),
        references("org_id", "organizations.id"),
        references("user_id", "users.id"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    create_column_indexes("api_tokens", "org_id", "user_id")

    op.create_table(
        "ai_messages",
        ident(),
        ident("session_id"),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("content_parts", sa.JSON(), nullable=True),
        *token_counts(nullable=True),
        sa.Column("cost_cents", Money(), nullable=True),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        timestamp("created_at"),
        references("session_id", "ai_sessions.id"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.create_index("ix_ai_messages_session_created", ["session_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ai_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_messages_session_created")
    op.drop_table("ai_messages")
    drop_column_indexes("api_tokens", "org_id", "user_id")
    op.drop_table("api_tokens")
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_sessions_user_activity")
    drop_column_indexes("ai_sessions", "org_id", "status")
    op.drop_table("ai_sessions")
    drop_column_indexes("users", "org_id")
    op.drop_table("users")
    drop_column_indexes("ai_cost_usage", "org_id")
    op.drop_table("ai_cost_usage")
    drop_column_indexes("organizations", "partner_id")
    op.drop_table("organizations")
