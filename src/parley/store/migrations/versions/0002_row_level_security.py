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

from parley.store.migrations.rls import ORG_VISIBLE_PER_ROW, create_policy, force_row_level_security, isolate_by_org

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DIRECT = ("ai_sessions", "ai_cost_usage", "api_tokens")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(ORG_VISIBLE_PER_ROW)
    isolate_by_org(DIRECT)
    # Messages belong to a session: visible and writable only through a visible parent.
    force_row_level_security("ai_messages")
    parent = "EXISTS (SELECT 1 FROM ai_sessions s WHERE s.id = ai_messages.session_id AND parley_org_visible(s.org_id))"
    create_policy("ai_messages", "parley_session_isolation", parent, parent)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP POLICY IF EXISTS parley_session_isolation ON ai_messages")
    op.execute("ALTER TABLE ai_messages DISABLE ROW LEVEL SECURITY")
    for table in DIRECT:
        op.execute(f"DROP POLICY IF EXISTS parley_org_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute("DROP FUNCTION IF EXISTS parley_org_visible(text)")
