"""The closed set of events a turn publishes, and their SSE wire encoding.

Wire contract (camelCase payloads; `data` is the whole event object including `type`):

    message_start{messageId}  content_delta{delta}  reasoning_delta{delta}
    message_end{inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens, costUsd, usageEstimated}
    title_updated{title}  error{code, message}  done{}
    stream_gap{afterId, nextId}: frames between the two ids were lost in transit (they are stored)
    context_trimmed{droppedMessages, summarized}: the model does not see the session's first
        droppedMessages stored messages (a summary of them when summarized)

Tools (a reply may hold several model rounds; see chat/turns.py):

    tool_use_start{toolUseId, toolName, input, executionId}: a call starts running
    tool_result{toolUseId, toolName, output, isError, truncated}: what it gave back (or why not)
    approval_required{executionId, toolUseId, toolName, input, description, expiresAt}: a call
        waits for a person; the stream then ends (message_end, done) and a decision continues it
    plan_approval_required{planId, executionId, toolUseId, title, steps, expiresAt}
    plan_step_start{planId, stepIndex, toolName}  plan_step_complete{planId, stepIndex, toolName, isError}
    plan_complete{planId, status}  approval_mode_changed{mode}

Each frame carries `id: <stream>-<seq>`: the number of the session's event stream (a turn, or its
continuation; numbered by the database) and the frame's position in it, so `Last-Event-ID` can
resume a running turn on any process. It is also the frame's entry id in Redis. A delta event
carries the pieces of one network read and goes out as one frame per piece. Imports the standard
library, orjson and the provider seam's ReasoningDelta.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, ClassVar, Literal

import orjson

# The model's reasoning is published in the provider's own event: the pieces of one network read,
# shown apart from the answer (which the provider calls TextDelta, and the stream ContentDelta).
from parley.providers.base import ReasoningDelta as ReasoningDelta


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageStart:
    """The assistant message began; `message_id` is the id it will be stored under."""

    type: Literal["message_start"] = "message_start"
    message_id: str


@dataclass(slots=True)
class ContentDelta:
    """Pieces of the answer, one frame (`content_delta{delta}`) each: a network read's run of them."""

    type: ClassVar[Literal["content_delta"]] = "content_delta"
    texts: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEnd:
    """The reply completed; usage and cost of the turn."""

    type: Literal["message_end"] = "message_end"
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: str | None = None  # decimal string: exact, never a float
    usage_estimated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TitleUpdated:
    """The session got a title (from its first message)."""

    type: Literal["title_updated"] = "title_updated"
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnError:
    """The turn failed or the session ended; `message` is safe to show a user."""

    type: Literal["error"] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The turn is over; nothing more will be published for it."""

    type: Literal["done"] = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamGap:
    """Frames between two ids never reached this reader (a relay failed); the reply is stored whole."""

    type: Literal["stream_gap"] = "stream_gap"
    after_id: str
    next_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextTrimmed:
    """The model is not sent the session's first `dropped_messages` stored messages (they do not
    fit its window); `summarized`: a summary of them is sent instead."""

    type: Literal["context_trimmed"] = "context_trimmed"
    dropped_messages: int
    summarized: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolUseStart:
    """A tool call starts running (it needed no approval, or was approved)."""

    type: Literal["tool_use_start"] = "tool_use_start"
    tool_use_id: str
    tool_name: str
    input: dict[str, Any]
    execution_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult:
    """What a call gave back, or why it did not run (denied, expired, invalid arguments...)."""

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    tool_name: str
    output: str
    is_error: bool
    truncated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequired:
    """A call waits for the session owner's decision until `expires_at` (ISO 8601)."""

    type: Literal["approval_required"] = "approval_required"
    execution_id: str
    tool_use_id: str
    tool_name: str
    input: dict[str, Any]
    description: str
    expires_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanApprovalRequired:
    """The model proposed a plan; approving it once lets its steps run without asking."""

    type: Literal["plan_approval_required"] = "plan_approval_required"
    plan_id: str
    execution_id: str
    tool_use_id: str
    title: str
    steps: list[dict[str, Any]]
    expires_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStepStart:
    type: Literal["plan_step_start"] = "plan_step_start"
    plan_id: str
    step_index: int
    tool_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanStepComplete:
    type: Literal["plan_step_complete"] = "plan_step_complete"
    plan_id: str
    step_index: int
    tool_name: str
    is_error: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanComplete:
    type: Literal["plan_complete"] = "plan_complete"
    plan_id: str
    status: str  # completed | aborted


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalModeChanged:
    """The session's effective approval mode changed (paused: per_step)."""

    type: Literal["approval_mode_changed"] = "approval_mode_changed"
    mode: str


StreamEvent = (
    MessageStart
    | ContentDelta
    | ReasoningDelta
    | MessageEnd
    | TitleUpdated
    | TurnError
    | Done
    | StreamGap
    | ContextTrimmed
    | ToolUseStart
    | ToolResult
    | ApprovalRequired
    | PlanApprovalRequired
    | PlanStepStart
    | PlanStepComplete
    | PlanComplete
    | ApprovalModeChanged
)


def encode(event: StreamEvent, turn: int, seq: int) -> list[bytes]:
    """The SSE frames of `event`, with ids `<stream>-<seq>`, `<stream>-<seq + 1>`, ...: one per piece of
    a delta, one for any other event. Payload JSON never holds a raw newline, so one `data:` line
    suffices. Deltas run once per token: their frames are made from the encoded text alone."""
    if type(event) is ContentDelta or type(event) is ReasoningDelta:
        head = _DELTA_HEADS[event.type]
        dumps = orjson.dumps
        return [b"id: %d-%d%b%b}\n\n" % (turn, i, head, dumps(text)) for i, text in enumerate(event.texts, seq)]
    return [b"id: %d-%d\nevent: %b\ndata: %b\n\n" % (turn, seq, event.type.encode(), orjson.dumps(_payload(event)))]


_DELTA_HEADS = {
    kind: b'\nevent: %b\ndata: {"type":"%b","delta":' % (kind.encode(), kind.encode())
    for kind in ("content_delta", "reasoning_delta")
}


def _payload(event: StreamEvent) -> dict[str, object]:
    """The JSON object sent as `data:` of an event that is not a delta: its fields, camelCase."""
    if type(event) is ContentDelta or type(event) is ReasoningDelta:
        raise ValueError("deltas are encoded piece by piece")
    payload: dict[str, object] = {"type": event.type}
    for attribute, key in _wire_names(type(event)):  # type: ignore[arg-type]
        payload[key] = getattr(event, attribute)
    return payload


@cache
def _wire_names(kind: type) -> tuple[tuple[str, str], ...]:
    """(attribute, wire key) of an event class's payload fields, in declaration order."""
    names = [f.name for f in fields(kind) if f.name != "type"]
    return tuple((name, re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)) for name in names)


HEARTBEAT_FRAME = b": ping\n\n"


def is_done_frame(frame: bytes) -> bool:
    """Whether an encoded frame is the `done` that ends its stream."""
    return b"\nevent: done\n" in frame
