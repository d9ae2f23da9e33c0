"""Request bodies (pydantic, at the edge only) and response shapes (camelCase, as clients read them).

Write bodies are strict: a boolean must be a JSON boolean, an integer a JSON integer, a string a
JSON string, so `"yes"` never passes for `true` nor `"5"` for `5`. Money is the one JSON number
read as `Decimal` (`JsonCents`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from parley.billing.cost import decimal_text
from parley.chat.approvals import SessionTool
from parley.providers.base import ForcedTool, ToolChoice
from parley.store.sql import Record

# A double holds any decimal of up to 15 significant digits exactly (DBL_DIG); past that, the
# number the client wrote may not be the one parsed, and money must not change silently.
EXACT_DIGITS = 15


def _json_cents(value: object) -> object:
    """A JSON number as an exact `Decimal`; strings and booleans are refused, as strict mode does."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    if isinstance(value, int):
        return Decimal(value)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    exact = Decimal(repr(value))  # the shortest text that reads back as this double
    if len(exact.as_tuple().digits) > EXACT_DIGITS:
        raise ValueError(f"has more than {EXACT_DIGITS} significant digits, which cannot be read exactly")
    return exact


MAX_CENTS = 10**12
JsonCents = Annotated[
    Annotated[Decimal, Field(ge=0, le=MAX_CENTS, decimal_places=6)] | None,
    BeforeValidator(_json_cents),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_CENTS}, {"type": "null"}],
            "description": "Cents as a JSON number, at most 6 decimal places; null means unlimited.",
        }
    ),
]
WRITE_BODY = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class CreateSessionBody(BaseModel):
    model_config = WRITE_BODY

    title: str | None = Field(None, max_length=255)
    page_context: dict[str, Any] | None = Field(None, alias="pageContext")
    org_id: str | None = Field(None, alias="orgId", max_length=36)
    model: str | None = Field(None, max_length=100)


class ForcedToolBody(BaseModel):
    model_config = WRITE_BODY

    name: str = Field(..., min_length=1, max_length=64)


class SendMessageBody(BaseModel):
    model_config = WRITE_BODY

    content: str
    page_context: dict[str, Any] | None = Field(None, alias="pageContext")
    # auto: the model may call tools; none: it answers in text; {"name"}: it calls that tool now.
    tool_choice: Literal["auto", "none"] | ForcedToolBody = Field("auto", alias="toolChoice")

    def choice(self) -> ToolChoice:
        choice = self.tool_choice
        return ForcedTool(choice.name) if isinstance(choice, ForcedToolBody) else choice


class DecisionBody(BaseModel):
    """`POST /sessions/{id}/approve/{executionId}`: approve or deny one tool call."""

    model_config = WRITE_BODY

    approved: bool
    reason: str | None = Field(None, max_length=1000)
    always: bool = False  # approved: allow this tool without asking for the rest of the chat


class ToolDecision(DecisionBody):
    execution_id: str = Field(..., alias="executionId", min_length=1, max_length=36)


class ToolDecisionsBody(BaseModel):
    """`POST /sessions/{id}/tool-decisions`: decide several calls at once, all or none."""

    model_config = WRITE_BODY

    decisions: list[ToolDecision] = Field(..., min_length=1, max_length=50)


class RenameBody(BaseModel):
    model_config = WRITE_BODY

    title: str = Field(..., min_length=1, max_length=255)


class BudgetBody(BaseModel):
    """Partial update: only the fields sent change; null means unlimited, 0 means none."""

    model_config = WRITE_BODY

    enabled: bool | None = None
    daily_budget_cents: JsonCents = Field(None, alias="dailyBudgetCents")
    monthly_budget_cents: JsonCents = Field(None, alias="monthlyBudgetCents")
    max_turns_per_session: int | None = Field(None, alias="maxTurnsPerSession", ge=1, le=10_000)
    messages_per_minute_per_user: int | None = Field(None, alias="messagesPerMinutePerUser", ge=0, le=100_000)
    messages_per_hour_per_org: int | None = Field(None, alias="messagesPerHourPerOrg", ge=0, le=10_000_000)
    allowed_models: list[str] | None = Field(None, alias="allowedModels", min_length=1, max_length=100)
    # Who decides tool calls: per_step (default), auto_approve, action_plan.
    approval_mode: Literal["per_step", "auto_approve", "action_plan"] | None = Field(None, alias="approvalMode")

    def changes(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.model_fields_set}
        for name in ("enabled", "approval_mode"):
            if name in values and values[name] is None:
                values.pop(name)  # neither can be "unlimited"
        return values


class PlanApprovalBody(BaseModel):
    model_config = WRITE_BODY

    approved: bool


class PauseBody(BaseModel):
    model_config = WRITE_BODY

    paused: bool


class FlagBody(BaseModel):
    """`POST /sessions/{id}/flag`: an optional note for the reviewer."""

    model_config = WRITE_BODY

    reason: str | None = Field(None, max_length=1000)


StatusFilter = Literal["active", "closed", "expired"]


def iso(value: datetime | None) -> str | None:
    """A UTC time as clients read it: ISO 8601 with `Z`."""
    return value.isoformat().replace("+00:00", "Z") if value else None


def as_utc(value: datetime | None) -> datetime | None:
    """A time from a query: one without an offset is read as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cents(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def _as_stored(value: Any) -> Any:
    return value


@cache
def _view_columns(columns: str) -> tuple[tuple[str, str, Callable[[Any], Any]], ...]:
    """(name, column, how its value is shown) for each of the space-separated columns: the name is
    the column's in camelCase (`turn_count`: `turnCount`); a time (`*_at`) is shown as `iso`,
    money (`*_cents`) as exact decimal text, anything else as stored. By name, not by type: a row
    built in memory may hold `0` for money (the schema names every time and amount so)."""
    found = []
    for column in columns.split():
        first, *rest = column.split("_")
        show = iso if column.endswith("_at") else _cents if column.endswith("_cents") else _as_stored
        found.append((first + "".join(word.capitalize() for word in rest), column, show))
    return tuple(found)


def _fields(row: Record, columns: str) -> dict[str, Any]:
    """The row's columns (space-separated), in that order, as clients read them (`_view_columns`)."""
    return {name: show(row[column]) for name, column, show in _view_columns(columns)}


def session_summary(row: Record) -> dict[str, Any]:
    return _fields(row, "id org_id title status model turn_count total_cost_cents last_activity_at created_at")


def session_detail(row: Record) -> dict[str, Any]:
    detail = (
        session_summary(row)
        | _fields(
            row,
            "approvals_paused allowed_tools user_id type max_turns system_prompt context_snapshot total_input_tokens"
            " total_output_tokens total_cache_read_tokens total_cache_write_tokens updated_at",
        )
        | flag_view(row)
    )
    detail["allowedTools"] = detail["allowedTools"] or []
    return detail


def flag_view(row: Record) -> dict[str, Any]:
    return _fields(row, "flagged_at flagged_by flag_reason")


def admin_session_view(row: Record) -> dict[str, Any]:
    """A session as an admin lists it: whose it is, and its flag."""
    return session_summary(row) | {"userId": row["user_id"], "userEmail": row.get("user_email")} | flag_view(row)


def audit_view(row: Record) -> dict[str, Any]:
    return (
        _fields(row, "id created_at action org_id")
        | {"userId": row["actor_user_id"]}
        | _fields(row, "session_id request_id client_ip user_agent detail")
    )


def message_view(row: Record) -> dict[str, Any]:
    parts = row["content_parts"] or []
    reasoning = None
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "reasoning":
            reasoning = part.get("text")
    return (
        _fields(row, "id role content")
        | {"reasoning": reasoning}
        | _fields(
            row,
            "input_tokens output_tokens cache_read_tokens cache_write_tokens cost_cents usage_estimated finish_reason"
            " created_at",
        )
        | {"parts": parts}
    )


def execution_view(row: Record) -> dict[str, Any]:
    """A tool call as stored: what was asked, who decided, how it ran."""
    return _fields(
        row,
        "id message_id tool_use_id tool_name server input description status requires_approval decided_by decided_at"
        " decision_reason expires_at is_error truncated error_message duration_ms plan_id plan_step created_at"
        " started_at completed_at",
    )


def tool_view(entry: SessionTool) -> dict[str, Any]:
    tool = entry.tool
    return {
        "name": tool.name,
        "title": tool.title or tool.tool,
        "description": tool.description,
        "server": tool.server,
        "inputSchema": tool.input_schema,
        "requireApproval": tool.approval,
        "readOnly": tool.read_only,
        "destructive": tool.destructive,
        "asks": entry.asks,
        "alwaysAllowed": entry.always_allowed,
    }


def plan_view(row: Record) -> dict[str, Any]:
    return _fields(
        row, "id execution_id title steps status current_step decided_by decided_at expires_at completed_at created_at"
    )


def usage_view(row: Record | None) -> dict[str, Any]:
    return {
        "inputTokens": row["input_tokens"] if row else 0,
        "outputTokens": row["output_tokens"] if row else 0,
        "cacheReadTokens": row["cache_read_tokens"] if row else 0,
        "cacheWriteTokens": row["cache_write_tokens"] if row else 0,
        "totalCostCents": _cents(row["total_cost_cents"]) if row else "0",
        "messageCount": row["message_count"] if row else 0,
    }


def messages_view(rows: Sequence[Record]) -> list[dict[str, Any]]:
    return [message_view(r) for r in rows]
