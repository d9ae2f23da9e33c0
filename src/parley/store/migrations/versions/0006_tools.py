"""Tools: every call the model makes (`ai_tool_executions`), action plans, pinned tool definitions,
the session's approval state and the organization's approval mode. RLS on the two tenant tables.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from parley.store.migrations.rls import drop_org_isolation, isolate_by_org
from parley.store.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TENANT_TABLES = ("ai_tool_executions", "ai_action_plans")


def upgrade() -> None:
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("awaiting_approval", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("approvals_paused", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("allowed_tools", sa.JSON(), nullable=True))
    with op.batch_alter_table("ai_budgets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approval_mode", sa.String(length=16), nullable=True))

    op.create_table(
        "ai_tool_executions",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("org_id", sa.String(length=36), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("session_id", sa.String(length=36), sa.ForeignKey("ai_sessions.id"), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("call_index", sa.Integer(), nullable=False),
        sa.Column("tool_use_id", sa.String(length=128), nullable=False),
        sa.Column("tool_name", sa.String(length=64), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=True),
        sa.Column("input", sa.JSON(), nullable=True),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requires_approval", sa.Boolean(), nullable=False),
        sa.Column("decided_by", sa.String(length=36), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("plan_id", sa.String(length=36), nullable=True),
        sa.Column("plan_step", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_ai_tool_executions_session_status", "ai_tool_executions", ["session_id", "status"])
    op.create_index("ix_ai_tool_executions_status_expires", "ai_tool_executions", ["status", "expires_at"])
    op.create_index("ix_ai_tool_executions_org_created", "ai_tool_executions", ["org_id", "created_at"])

    op.create_table(
        "ai_action_plans",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("org_id", sa.String(length=36), sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("session_id", sa.String(length=36), sa.ForeignKey("ai_sessions.id"), nullable=False),
        sa.Column("execution_id", sa.String(length=36), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("decided_by", sa.String(length=36), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_ai_action_plans_session_status", "ai_action_plans", ["session_id", "status"])

    op.create_table(
        "ai_tool_definitions",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("approved_at", UTCDateTime(), nullable=True),
    )

    if op.get_bind().dialect.name == "postgresql":
        isolate_by_org(TENANT_TABLES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        drop_org_isolation(TENANT_TABLES)
    op.drop_table("ai_tool_definitions")
    op.drop_index("ix_ai_action_plans_session_status", table_name="ai_action_plans")
    op.drop_table("ai_action_plans")
    for index in (
        "ix_ai_tool_executions_org_created",
        "ix_ai_tool_executions_status_expires",
        "ix_ai_tool_executions_session_status",
    ):
        op.drop_index(index, table_name="ai_tool_executions")
    op.drop_table("ai_tool_executions")
    with op.batch_alter_table("ai_budgets", schema=None) as batch_op:
        batch_op.drop_column("approval_mode")
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.drop_column("allowed_tools")
        batch_op.drop_column("approvals_paused")
        batch_op.drop_column("awaiting_approval")
