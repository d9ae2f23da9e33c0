"""Row-level security on every tenant table (PostgreSQL only; SQLite relies on parley's filters).

Policies read transaction-local settings that `Database.transaction` sets with
`set_config(name, value, true)`: `parley.scope` ('organization' | 'partner' | 'system') and
`parley.org_ids` (comma-separated). They fail closed: an unset setting, or the empty string a
pooled connection returns once a setting has been used, matches no row. ENABLE and FORCE, so
even the tables' owner is subject to them.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ORG_VISIBLE = """
CREATE OR REPLACE FUNCTION parley_org_visible(org text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN current_setting('parley.scope', true) = 'system' THEN true
    WHEN current_setting('parley.scope', true) IN ('organization', 'partner')
      THEN coalesce(org = ANY (string_to_array(NULLIF(current_setting('parley.org_ids', true), ''), ',')), false)
    ELSE false
  END
$$
"""

DIRECT = ("ai_sessions", "ai_cost_usage", "api_tokens")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(ORG_VISIBLE)
    for table in DIRECT:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY parley_org_isolation ON {table} FOR ALL "
            "USING (parley_org_visible(org_id)) WITH CHECK (parley_org_visible(org_id))"
        )
    # Messages belong to a session: visible and writable only through a visible parent.
    op.execute("ALTER TABLE ai_messages ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE ai_messages FORCE ROW LEVEL SECURITY")
    parent = "EXISTS (SELECT 1 FROM ai_sessions s WHERE s.id = ai_messages.session_id AND parley_org_visible(s.org_id))"
    op.execute(f"CREATE POLICY parley_session_isolation ON ai_messages FOR ALL USING ({parent}) WITH CHECK ({parent})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP POLICY IF EXISTS parley_session_isolation ON ai_messages")
    op.execute("ALTER TABLE ai_messages DISABLE ROW LEVEL SECURITY")
    for table in DIRECT:
        op.execute(f"DROP POLICY IF EXISTS parley_org_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION IF EXISTS parley_org_visible(text)")
