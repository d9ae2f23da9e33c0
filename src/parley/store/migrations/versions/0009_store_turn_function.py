"""`parley_store_turn(...)`: a plain turn stored in one statement, its own transaction (PostgreSQL).

Storing a turn took a transaction of six statements and five round trips: BEGIN and the tenant's
settings, the session's totals and lease, the reply, the organization's day and month cost rows,
COMMIT. Every turn of an organization updates the same two cost rows, so their row locks were held
from that upsert until the COMMIT reached the server: a round trip through a busy event loop, tens
of milliseconds at 500 streams, during which every other turn of the organization waited with a
pooled connection in hand (`docs/performance-log.md`, 2026-12-07).

This function does the same writes in the same order, in one call sent outside any transaction:
PostgreSQL runs it as its own transaction and commits it before answering, so each lock is held
for microseconds. It is SECURITY INVOKER (the default): it runs as the application role, and
row-level security applies to every statement in it as to the statements it replaces. It sets the
tenant's settings transaction-local first, as `Database.unit` does with its BEGIN.

What it writes, as `chat/sessions.py` `_persist` does with `store/repositories.py`:
- the round's reservation deleted (when there is one);
- the session's totals and turn count added, and the lease released if it is still this turn's
  (when `p_release`), the session row first (the lock order, see `_persist`);
- the reply upserted over its checkpoint, by its id (the lease token);
- the day's and month's cost rows upserted (when `p_daily_key` is not NULL).

Turns with tool calls, plans or an approval wait keep the transaction of statements.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SIGNATURE = (
    "text, text, text, varchar, varchar, varchar, boolean, integer, timestamptz, "
    "integer, integer, integer, integer, numeric, "
    "integer, text, json, integer, integer, integer, integer, numeric, boolean, varchar, "
    "varchar, varchar, varchar, varchar, varchar, integer"
)

STORE_TURN = """
CREATE OR REPLACE FUNCTION parley_store_turn(
  p_scope text, p_org_ids text, p_user_id text,
  p_reservation_id varchar,
  p_session_id varchar, p_lease_token varchar, p_release boolean, p_turns integer, p_now timestamptz,
  p_input_tokens integer, p_output_tokens integer, p_cache_read_tokens integer, p_cache_write_tokens integer,
  p_cost_cents numeric,
  p_position integer, p_content text, p_parts json,
  p_reply_input_tokens integer, p_reply_output_tokens integer, p_reply_cache_read_tokens integer,
  p_reply_cache_write_tokens integer, p_reply_cost_cents numeric, p_usage_estimated boolean,
  p_finish_reason varchar,
  p_org_id varchar, p_daily_key varchar, p_daily_id varchar, p_monthly_key varchar, p_monthly_id varchar,
  p_messages integer
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('parley.scope', p_scope, true), set_config('parley.org_ids', p_org_ids, true),
          set_config('parley.user_id', p_user_id, true);
  IF p_reservation_id IS NOT NULL THEN
    DELETE FROM public.ai_budget_reservations WHERE id = p_reservation_id;
  END IF;
  UPDATE public.ai_sessions SET
    total_input_tokens = total_input_tokens + p_input_tokens,
    total_output_tokens = total_output_tokens + p_output_tokens,
    total_cache_read_tokens = total_cache_read_tokens + p_cache_read_tokens,
    total_cache_write_tokens = total_cache_write_tokens + p_cache_write_tokens,
    total_cost_cents = total_cost_cents + p_cost_cents,
    turn_count = turn_count + p_turns,
    last_activity_at = p_now,
    updated_at = p_now,
    lease_token = CASE WHEN p_release AND lease_token = p_lease_token THEN NULL ELSE lease_token END,
    lease_expires_at = CASE WHEN p_release AND lease_token = p_lease_token THEN NULL ELSE lease_expires_at END,
    lease_owner = CASE WHEN p_release AND lease_token = p_lease_token THEN NULL ELSE lease_owner END,
    stop_requested_at = CASE WHEN p_release AND lease_token = p_lease_token THEN NULL ELSE stop_requested_at END
  WHERE id = p_session_id;
  INSERT INTO public.ai_messages AS m (
    id, session_id, position, role, content, content_parts, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, cost_cents, usage_estimated, finish_reason, created_at
  ) VALUES (
    p_lease_token, p_session_id, p_position, 'assistant', p_content, p_parts, p_reply_input_tokens,
    p_reply_output_tokens, p_reply_cache_read_tokens, p_reply_cache_write_tokens, p_reply_cost_cents,
    p_usage_estimated, p_finish_reason, p_now
  ) ON CONFLICT (id) DO UPDATE SET
    content = excluded.content, content_parts = excluded.content_parts, input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens, cache_read_tokens = excluded.cache_read_tokens,
    cache_write_tokens = excluded.cache_write_tokens, cost_cents = excluded.cost_cents,
    usage_estimated = excluded.usage_estimated, finish_reason = excluded.finish_reason;
  IF p_daily_key IS NOT NULL THEN
    INSERT INTO public.ai_cost_usage AS c (
      id, org_id, period, period_key, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
      total_cost_cents, session_count, message_count, updated_at
    ) VALUES
      (p_daily_id, p_org_id, 'daily', p_daily_key, p_input_tokens, p_output_tokens, p_cache_read_tokens,
       p_cache_write_tokens, p_cost_cents, 0, p_messages, p_now),
      (p_monthly_id, p_org_id, 'monthly', p_monthly_key, p_input_tokens, p_output_tokens,
       p_cache_read_tokens, p_cache_write_tokens, p_cost_cents, 0, p_messages, p_now)
    ON CONFLICT (org_id, period, period_key) DO UPDATE SET
      input_tokens = c.input_tokens + excluded.input_tokens,
      output_tokens = c.output_tokens + excluded.output_tokens,
      cache_read_tokens = c.cache_read_tokens + excluded.cache_read_tokens,
      cache_write_tokens = c.cache_write_tokens + excluded.cache_write_tokens,
      total_cost_cents = c.total_cost_cents + excluded.total_cost_cents,
      message_count = c.message_count + excluded.message_count,
      updated_at = excluded.updated_at;
  END IF;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(STORE_TURN)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION IF EXISTS parley_store_turn({SIGNATURE})")
