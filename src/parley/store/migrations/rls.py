"""The row-level security SQL that several revisions share (PostgreSQL only).

Revisions are history: what they emit must never change, so a builder here is only ever added
to, never edited in a way that changes the SQL of a revision that uses it. Imported by
`versions/*`; imports only alembic.
"""

from __future__ import annotations

from collections.abc import Iterable

from alembic import op

# The one-argument visibility function of 0002 (0007 replaces it, and puts it back on downgrade).
# It reads the settings once per row; the three-argument function of 0007 takes them as arguments.
ORG_VISIBLE_PER_ROW = """
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

# The settings `Database.transaction` sets, as uncorrelated sub-selects: PostgreSQL runs each once
# per statement (an InitPlan), not once per row.
SCOPE = "(SELECT current_setting('parley.scope', true))"
ORGS = "(SELECT string_to_array(NULLIF(current_setting('parley.org_ids', true), ''), ','))"


def visible(column: str) -> str:
    """The policy expression of 0007 on: `column` names one of the tenant's organizations."""
    return f"parley_org_visible({column}, {SCOPE}, {ORGS})"


def force_row_level_security(table: str) -> None:
    """ENABLE and FORCE: even the table's owner is subject to the policies."""
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


def create_policy(table: str, name: str, using: str, check: str) -> None:
    """A policy for every command: rows are seen by `using` and written by `check`."""
    op.execute(f"CREATE POLICY {name} ON {table} FOR ALL USING ({using}) WITH CHECK ({check})")


def isolate_by_org(tables: Iterable[str]) -> None:
    """Row-level security on tables with an `org_id`, as 0002 set it up (0007 rewrites the policies)."""
    for table in tables:
        force_row_level_security(table)
        create_policy(table, "parley_org_isolation", "parley_org_visible(org_id)", "parley_org_visible(org_id)")


def drop_org_isolation(tables: Iterable[str]) -> None:
    for table in tables:
        op.execute(f"DROP POLICY IF EXISTS parley_org_isolation ON {table}")
