"""Row-level security on `organizations` and `users`; policies that read the settings once.

With org B's settings the application role could list every organization's name and count every
user: both tables had no policy. Now an organization row is visible when it is one of the
tenant's organizations, a user row when its organization is visible or it is the tenant's own user;
system scope (the CLI, the token lookup) sees all. ENABLE and FORCE, as on the other tables.

Every policy (the tool tables of 0006 included) now calls `parley_org_visible(org, scope, orgs)`
with the settings as uncorrelated sub-selects, `(SELECT current_setting('parley.scope', true))`:
PostgreSQL runs those once per statement (an InitPlan) instead of once per row. The function
uses each argument once, so the planner inlines it into the policy and no function call is made
per row either. The one-argument function of 0002 is dropped.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

from parley.store.migrations.rls import ORG_VISIBLE_PER_ROW, create_policy, force_row_level_security, visible

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Each argument appears once: a SQL function is inlined only then when an argument is a sub-select.
# scope 'system' sees every row; 'organization' and 'partner' the listed organizations; anything
# else (unset, '', an unknown scope) nothing.
ORG_VISIBLE = """
CREATE OR REPLACE FUNCTION parley_org_visible(org text, scope text, orgs text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(
    CASE scope WHEN 'system' THEN true WHEN 'organization' THEN NULL WHEN 'partner' THEN NULL ELSE false END,
    org = ANY (orgs),
    false
  )
$$
"""

USER = "(SELECT NULLIF(current_setting('parley.user_id', true), ''))"


# table -> (USING, WITH CHECK)
POLICIES = {
    "ai_sessions": (visible("org_id"), visible("org_id")),
    "ai_cost_usage": (visible("org_id"), visible("org_id")),
    "api_tokens": (visible("org_id"), visible("org_id")),
    "ai_budgets": (visible("org_id"), visible("org_id")),
    "ai_budget_reservations": (visible("org_id"), visible("org_id")),
    "ai_tool_executions": (visible("org_id"), visible("org_id")),
    "ai_action_plans": (visible("org_id"), visible("org_id")),
    "organizations": (visible("id"), visible("id")),
    # A tenant may read its own user row; it writes users only into its organizations.
    "users": (f"({visible('org_id')} OR id = {USER})", visible("org_id")),
}
NEW_TABLES = ("organizations", "users")
MESSAGES_PARENT = "EXISTS (SELECT 1 FROM ai_sessions s WHERE s.id = ai_messages.session_id AND {visible})"


def _policy(table: str, name: str, using: str, check: str) -> None:
    op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
    create_policy(table, name, using, check)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(ORG_VISIBLE)
    for table in NEW_TABLES:
        force_row_level_security(table)
    for table, (using, check) in POLICIES.items():
        _policy(table, "parley_org_isolation", using, check)
    parent = MESSAGES_PARENT.format(visible=visible("s.org_id"))
    _policy("ai_messages", "parley_session_isolation", parent, parent)
    op.execute("DROP FUNCTION IF EXISTS parley_org_visible(text)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(ORG_VISIBLE_PER_ROW)
    for table in NEW_TABLES:
        op.execute(f"DROP POLICY IF EXISTS parley_org_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    old = "parley_org_visible(org_id)"
    for table in POLICIES:
        if table not in NEW_TABLES:
            _policy(table, "parley_org_isolation", old, old)
    parent = MESSAGES_PARENT.format(visible="parley_org_visible(s.org_id)")
    _policy("ai_messages", "parley_session_isolation", parent, parent)
    op.execute("DROP FUNCTION IF EXISTS parley_org_visible(text, text, text[])")
