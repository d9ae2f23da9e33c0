"""The audit trail (`ai_audit_events`), admin tokens, and flagged sessions.

`ai_audit_events` is append-only for the application: row-level security lets a tenant read and
insert the rows of its organizations (a row without one is system scope's), and there is no
policy for UPDATE at all; `store/postgres.py` grants the application role SELECT and INSERT on it,
never UPDATE or DELETE. Old rows are pruned by `parley_prune_audit_events(days)`, a SECURITY
DEFINER function owned by the tables' owner: it deletes only rows older than `days` (at least
one), with the scope it needs set for its own duration, and is the one DELETE its policy admits.

`api_tokens.is_admin` marks tokens that read every session of their organizations and the audit
trail; `ai_sessions.flagged_at | flagged_by | flag_reason` hold a flag for review.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from parley.store.migrations.rls import force_row_level_security, visible
from parley.store.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

VISIBLE = visible("org_id")

# Runs as its owner (SECURITY DEFINER) with system scope for its own duration only (the SET
# clause restores the caller's setting on return): row-level security is forced on the owner too.
PRUNE = """
CREATE OR REPLACE FUNCTION parley_prune_audit_events(keep_days integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
SET parley.scope = 'system'
AS $$
DECLARE
  pruned bigint;
BEGIN
  IF keep_days IS NULL OR keep_days < 1 THEN
    RAISE EXCEPTION 'parley_prune_audit_events: keep_days must be at least 1, not %', keep_days;
  END IF;
  DELETE FROM public.ai_audit_events WHERE created_at < now() - make_interval(days => keep_days);
  GET DIAGNOSTICS pruned = ROW_COUNT;
  RETURN pruned;
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("is_admin", sa.Boolean(), server_default="0", nullable=False))
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flagged_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("flagged_by", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("flag_reason", sa.Text(), nullable=True))
        batch_op.create_index("ix_ai_sessions_org_flagged", ["org_id", "flagged_at"], unique=False)
    op.create_table(
        "ai_audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(length=96), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=True),
        sa.Column("actor_user_id", sa.String(length=36), nullable=True),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
    )
    op.create_index("ix_ai_audit_events_org_created", "ai_audit_events", ["org_id", "created_at"])
    op.create_index("ix_ai_audit_events_created", "ai_audit_events", ["created_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    force_row_level_security("ai_audit_events")
    op.execute(f"CREATE POLICY parley_audit_read ON ai_audit_events FOR SELECT USING ({VISIBLE})")
    op.execute(f"CREATE POLICY parley_audit_append ON ai_audit_events FOR INSERT WITH CHECK ({VISIBLE})")
    # Only the pruning function deletes (it runs with system scope); the app role has no DELETE grant.
    op.execute(f"CREATE POLICY parley_audit_prune ON ai_audit_events FOR DELETE USING ({VISIBLE})")
    op.execute(PRUNE)
    op.execute("REVOKE ALL ON FUNCTION parley_prune_audit_events(integer) FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS parley_prune_audit_events(integer)")
    op.drop_index("ix_ai_audit_events_created", table_name="ai_audit_events")
    op.drop_index("ix_ai_audit_events_org_created", table_name="ai_audit_events")
    op.drop_table("ai_audit_events")
    with op.batch_alter_table("ai_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_sessions_org_flagged")
        batch_op.drop_column("flag_reason")
        batch_op.drop_column("flagged_by")
        batch_op.drop_column("flagged_at")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("is_admin")
