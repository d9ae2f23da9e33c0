"""SQLAlchemy 2 table models; one schema for SQLite and PostgreSQL.

Names follow the reference data model (`ai_sessions`, `ai_messages`, `ai_cost_usage`, plus
`organizations`, `users`, `api_tokens`). Ids are UUID strings. Relationships are not declared:
repositories query explicitly, so nothing loads lazily behind an await.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Identity, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from parley.store.types import Money, UTCDateTime


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    partner_id: Mapped[str | None] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    org_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    partner_id: Mapped[str | None] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(16))  # organization | partner | system
    can_write: Mapped[bool] = mapped_column(Boolean)
    # Reads every session of its organizations, flags and unflags them, reads the audit trail.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AiSession(Base):
    __tablename__ = "ai_sessions"
    __table_args__ = (
        Index("ix_ai_sessions_user_activity", "user_id", "last_activity_at"),
        Index("ix_ai_sessions_lease_expires_at", "lease_expires_at"),  # leases to recover
        Index("ix_ai_sessions_org_flagged", "org_id", "flagged_at"),  # an admin's flagged sessions
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | closed | expired
    type: Mapped[str] = mapped_column(String(32), default="general")
    title: Mapped[str | None] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(100))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    context_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    total_input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_cost_cents: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    turn_count: Mapped[int] = mapped_column(Integer, default=0)
    max_turns: Mapped[int] = mapped_column(Integer, default=50)
    # Messages are ordered by a per-session position, not by the clock: a clock that stalls or
    # steps back must not reorder a conversation.
    message_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The turn lease: one turn at a time per session, across server processes. A running turn
    # renews it; a process that dies leaves one that its successor or, once it expires, any
    # process recovers (`lease_owner` names the holder: host, process id and a start nonce).
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    # Each event stream of the session (a turn, or its continuation) takes the next number: the
    # first half of its events' ids, so they keep increasing whichever process streams.
    stream_number: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Stop, asked on any process; the turn's process honours it within a second.
    stop_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The reply whose tool calls wait for a person's decision (no turn runs meanwhile).
    awaiting_approval: Mapped[str | None] = mapped_column(String(36))
    # Paused: every call that requires approval asks, whatever the organization's mode.
    approvals_paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Tools the owner chose to always allow in this chat (exposed names).
    allowed_tools: Mapped[list[str] | None] = mapped_column(JSON)
    # Flagged for review: by its owner or an admin of its organization; only an admin clears it.
    flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    flagged_by: Mapped[str | None] = mapped_column(String(36))
    flag_reason: Mapped[str | None] = mapped_column(Text)


class AiMessage(Base):
    __tablename__ = "ai_messages"
    __table_args__ = (
        Index("ix_ai_messages_session_created", "session_id", "created_at"),
        Index("ix_ai_messages_session_position", "session_id", "position"),
        Index("ix_ai_messages_role_created", "role", "created_at"),  # rate-limit windows
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("ai_sessions.id"))
    position: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # order within the session
    role: Mapped[str] = mapped_column(String(16))  # user | assistant | system | tool_use | tool_result
    content: Mapped[str | None] = mapped_column(Text)  # the answer text only, never reasoning
    content_parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_cents: Mapped[Decimal | None] = mapped_column(Money())
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AiCostUsage(Base):
    __tablename__ = "ai_cost_usage"
    __table_args__ = (UniqueConstraint("org_id", "period", "period_key", name="uq_ai_cost_usage_period"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    period: Mapped[str] = mapped_column(String(10))  # daily | monthly
    period_key: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD | YYYY-MM (UTC)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    total_cost_cents: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    session_count: Mapped[int] = mapped_column(Integer, default=0)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AiBudget(Base):
    """An organization's limits; NULL = unlimited, 0 = nothing allowed. No row: no limits."""

    __tablename__ = "ai_budgets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    daily_budget_cents: Mapped[Decimal | None] = mapped_column(Money())
    monthly_budget_cents: Mapped[Decimal | None] = mapped_column(Money())
    max_turns_per_session: Mapped[int | None] = mapped_column(Integer)
    messages_per_minute_per_user: Mapped[int | None] = mapped_column(Integer)
    messages_per_hour_per_org: Mapped[int | None] = mapped_column(Integer)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    approval_mode: Mapped[str | None] = mapped_column(String(16))  # per_step (NULL) | auto_approve | action_plan
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AiBudgetReservation(Base):
    """A running turn's worst-case cost, held against the budget until the turn settles.

    A process that dies leaves a reservation that stops counting at `expires_at`.
    """

    __tablename__ = "ai_budget_reservations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("ai_sessions.id"))
    amount_cents: Mapped[Decimal] = mapped_column(Money())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AiToolExecution(Base):
    """One tool call the model made, from the moment it was made: its decision, run and result.

    status: pending (waits for a person) -> approved | denied | expired; approved or needing no
    approval -> executing (committed before the tool runs) -> completed | failed; refused: never
    ran (unknown or blocked tool, invalid arguments). A row found `executing` after a crash
    becomes failed, outcome unknown, and is never run again by itself.
    """

    __tablename__ = "ai_tool_executions"
    __table_args__ = (
        Index("ix_ai_tool_executions_session_status", "session_id", "status"),
        Index("ix_ai_tool_executions_status_expires", "status", "expires_at"),  # expiry sweep
        Index("ix_ai_tool_executions_org_created", "org_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    session_id: Mapped[str] = mapped_column(ForeignKey("ai_sessions.id"))
    message_id: Mapped[str] = mapped_column(String(36))  # the reply that holds the call
    round: Mapped[int] = mapped_column(Integer)  # the model round of the turn
    call_index: Mapped[int] = mapped_column(Integer)  # the call's place in its round
    tool_use_id: Mapped[str] = mapped_column(String(128))  # the model's id for the call
    tool_name: Mapped[str] = mapped_column(String(64))  # as the model knows it: server__tool
    server: Mapped[str | None] = mapped_column(String(64))
    input: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    input_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical arguments
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_by: Mapped[str | None] = mapped_column(String(36))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decision_reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    output: Mapped[str | None] = mapped_column(Text)  # as stored: capped, with a marker when cut
    is_error: Mapped[bool] = mapped_column(Boolean, default=False)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    error_message: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    plan_id: Mapped[str | None] = mapped_column(String(36))
    plan_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AiActionPlan(Base):
    """A plan the model proposed in `action_plan` mode: approved once, then carried out step by step.

    status: pending -> approved (running) -> completed | aborted; pending -> rejected | expired.
    """

    __tablename__ = "ai_action_plans"
    __table_args__ = (Index("ix_ai_action_plans_session_status", "session_id", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    session_id: Mapped[str] = mapped_column(ForeignKey("ai_sessions.id"))
    execution_id: Mapped[str] = mapped_column(String(36))  # the call that proposed it
    title: Mapped[str] = mapped_column(String(255))
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{toolName, input, reasoning, status}]
    status: Mapped[str] = mapped_column(String(16))
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    decided_by: Mapped[str | None] = mapped_column(String(36))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AiToolDefinition(Base):
    """A tool's definition as first seen (or last approved by an operator): a tool whose name,
    description or schema no longer hashes to `digest` is blocked until approved again."""

    __tablename__ = "ai_tool_definitions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # server__tool
    server: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AiAuditEvent(Base):
    """One thing that happened, recorded in the transaction that made it happen (append-only).

    `action` names it (`ai.session.create`, `ai.tool.<name>`, `ai.security.*`...); `detail` is a
    small JSON object, never message content or secrets. The application may insert and read
    rows, never change or delete them: old rows are pruned by the owner's
    `parley_prune_audit_events(days)` (PostgreSQL) or by the upkeep (SQLite). Ids are a sequence:
    the log is read in the order it was written, and an insert appends.
    """

    __tablename__ = "ai_audit_events"
    __table_args__ = (
        Index("ix_ai_audit_events_org_created", "org_id", "created_at"),
        Index("ix_ai_audit_events_created", "created_at"),  # pruning
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    action: Mapped[str] = mapped_column(String(96))
    org_id: Mapped[str | None] = mapped_column(String(36))  # None: visible to system scope only
    actor_user_id: Mapped[str | None] = mapped_column(String(36))
    session_id: Mapped[str | None] = mapped_column(String(36))
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
