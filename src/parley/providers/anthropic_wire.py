"""Anthropic Messages wire translation: request bodies out, stream events in. Pure, no I/O.

`build_request` turns provider-neutral messages and tools into a streaming `/v1/messages` body
with prompt caching breakpoints; `AnthropicStreamTranslator` turns decoded SSE events into
provider events, tool calls included (tested byte-split against golden transcripts);
`classify_error` maps an error answer, HTTP or in-stream, to a `ProviderErrorKind`. Wire
details: `reference/protocols-security.md` §A.7 and docs/providers-anthropic.md. Upstream error
text goes to the log, never into an exception.

Imports: standard library, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    Finished,
    ForcedTool,
    ProviderEvent,
    TextPart,
    ToolCallReady,
    ToolCallStarted,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
    Usage,
    add_reasoning,
    add_text,
    estimate_tokens,
)
from parley.providers.http import StreamFailedError
from parley.providers.sse import ServerSentEvent
from parley.providers.tool_calls import (
    call_as_text,
    check_tool_choice,
    finished_arguments,
    generated_call_id,
    result_as_text,
    result_output,
    tool_parts,
)

__all__ = [
    "ANCHOR_EVERY",
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamTranslator",
    "CacheTTL",
    "build_request",
    "classify_error",
]

logger = logging.getLogger("parley.providers.anthropic")

Kind = ProviderErrorKind
CacheTTL = Literal["5m", "1h"]

DEFAULT_MAX_TOKENS = 4096  # the API requires max_tokens; this is what we send when none is given
# A mid-history breakpoint sits on a message index that only moves every ANCHOR_EVERY messages,
# so it stays put (and is re-read, which refreshes it) across many turns. See build_request.
ANCHOR_EVERY = 16

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "refusal",
    "tool_use": "tool_calls",
}
# Anthropic names the overflow "prompt is too long"; relays and Anthropic-dialect servers
# (vLLM, gateways) pass on their own wording.
_CONTEXT_MARKERS = ("prompt is too long", "maximum context length", "context_length_exceeded")
# In-stream errors (and HTTP answers whose status says nothing more specific) by error.type.
_TYPE_KINDS = {
    "overloaded_error": Kind.OVERLOADED,
    "rate_limit_error": Kind.RATE_LIMITED,
    "api_error": Kind.HTTP,
    "authentication_error": Kind.AUTH,
    "permission_error": Kind.AUTH,
    "billing_error": Kind.AUTH,  # the operator's account, not the user's request: same remedy
    "not_found_error": Kind.MODEL_NOT_FOUND,
    "timeout_error": Kind.TIMEOUT,
    "invalid_request_error": Kind.BAD_REQUEST,
    "request_too_large": Kind.BAD_REQUEST,
}
# message_start / message_delta usage field -> translator slot. Input buckets are disjoint.
_USAGE_FIELDS = (
    ("input_tokens", "_input"),
    ("output_tokens", "_output"),
    ("cache_read_input_tokens", "_cache_read"),
    ("cache_creation_input_tokens", "_cache_write"),
)


# --- request -------------------------------------------------------------------------------------


def build_request(
    messages: Sequence[ChatMessage],
    *,
    model: str,
    max_tokens: int | None,
    cache_ttl: CacheTTL = "5m",
    thinking_budget: int | None = None,
    tools: Sequence[ToolSpec] = (),
    tool_choice: ToolChoice = "auto",
) -> dict[str, Any]:
    """The streaming request body. Raises ProviderError(BAD_REQUEST) for a misplaced tool part, a
    forced tool that is not offered, or no message.

    Tool calls go out as the assistant's `tool_use` blocks after its text; a `tool` message becomes
    a user message of `tool_result` blocks, which the following user message joins after them (the
    API wants the results first). A request without tools carries them as text instead: the API
    refuses tool blocks when `tools` is absent. Thinking is left out when a tool is forced (the API
    refuses both at once) or when the last assistant message called tools: the API then wants it
    to open with its signed thinking block, which parley does not keep.

    Breakpoints (at most the API's 4):
    - the last tool definition: tools come first in the cached prefix and change least;
    - the system prompt's last block: the prefix every turn of every session with it shares;
    - the last block of the message just before the new one: this turn writes the history so
      far, the next turn reads it back and pays full price only for its own tail;
    - an anchor on a message index that moves only every ANCHOR_EVERY messages, so when the
      previous turn's entry cannot be found (a regenerated or failed turn, more than the API's
      ~20-block lookback in between) only the messages after the anchor are re-sent uncached.
    Breakpoints add no cost of their own: writes are billed once, for tokens not yet cached.
    """
    check_tool_choice(tools, tool_choice)
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call id -> tool name, for results written as text
    for message in messages:
        role, blocks = _message_blocks(message, bool(tools), names)
        if not blocks:
            continue
        if role == "system":
            system.extend(blocks)
        elif turns and turns[-1]["role"] == role:
            # Dropping an empty message can leave two in a row from one role, and a tool message
            # is a user message here; Anthropic merges them itself, other Anthropic-dialect
            # servers may refuse them, so merge here.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise ProviderError(Kind.BAD_REQUEST, "There is no message to send to the model.")

    cache: dict[str, str] = {"type": "ephemeral"}
    if cache_ttl == "1h":
        cache["ttl"] = "1h"  # 5m is the default: leave it out for dialect servers that know no ttl
    if system:
        system[-1]["cache_control"] = cache
    prefix = len(turns) - 2
    if prefix >= 0:
        turns[prefix]["content"][-1]["cache_control"] = cache
        anchor = (prefix + 1) // ANCHOR_EVERY * ANCHOR_EVERY - 1
        if 0 <= anchor < prefix:
            turns[anchor]["content"][-1]["cache_control"] = cache

    wire_max = max_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "max_tokens": wire_max, "stream": True}
    if tools:
        body["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools]
        body["tools"][-1]["cache_control"] = cache
        if tool_choice == "none":
            body["tool_choice"] = {"type": "none"}
        elif isinstance(tool_choice, ForcedTool):
            body["tool_choice"] = {"type": "tool", "name": tool_choice.name}
        # "auto" is the API's default: left out
    if system:
        body["system"] = system
    body["messages"] = turns
    if thinking_budget is not None and not isinstance(tool_choice, ForcedTool) and not _in_tool_use(turns):
        # max_tokens covers thinking plus answer and must exceed the budget: the caller's limit
        # is for the answer, so the budget comes on top.
        body["max_tokens"] = wire_max + thinking_budget
        body["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
    return body


def _message_blocks(message: ChatMessage, tools: bool, names: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """The role and content blocks of one message (a tool message is a user message); `tools`
    says whether tool blocks may be sent, `names` gathers the call ids seen so far."""
    calls, results = tool_parts(message)
    if message.role == "tool":
        if tools:
            return "user", [_tool_result(r) for r in results]
        return "user", [{"type": "text", "text": result_as_text(r, names)} for r in results]
    # Reasoning parts are display-only (and unsigned): never sent back. The API refuses empty or
    # whitespace-only text blocks, so those are dropped too.
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": p.text}
        for p in message.parts
        if isinstance(p, TextPart) and p.text and not p.text.isspace()
    ]
    names.update((call.call_id, call.name) for call in calls)
    if tools:
        blocks += [{"type": "tool_use", "id": c.call_id, "name": c.name, "input": c.arguments} for c in calls]
    else:
        blocks += [{"type": "text", "text": call_as_text(c)} for c in calls]
    return message.role, blocks


def _tool_result(result: ToolResultPart) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.call_id, "content": result_output(result)}
    if result.is_error:
        block["is_error"] = True
    return block


def _in_tool_use(turns: list[dict[str, Any]]) -> bool:
    """Whether the last assistant message called tools."""
    last = next((turn for turn in reversed(turns) if turn["role"] == "assistant"), None)
    return last is not None and any(block["type"] == "tool_use" for block in last["content"])


# --- errors --------------------------------------------------------------------------------------


def _error_fields(body: object) -> tuple[str | None, str]:
    """(error.type, lower-cased text to search) of an error body: parsed JSON or plain text."""
    err: Any = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        etype = err.get("type")
        fields = (err.get("message"), etype, err.get("code"))
        return (etype if isinstance(etype, str) else None), " ".join(str(f) for f in fields if f).lower()
    return None, (str(err).lower() if err is not None else "")


def classify_error(status: int | None, body: object, *, default: ProviderErrorKind) -> ProviderErrorKind:
    """The kind for an error answer; `status` is None for an in-stream `error` event."""
    etype, text = _error_fields(body)
    if any(marker in text for marker in _CONTEXT_MARKERS):
        return Kind.CONTEXT_LENGTH
    if status is None:
        return _TYPE_KINDS.get(etype or "", default)
    if status in (401, 403):
        return Kind.AUTH
    if status == 404:
        # Anthropic says "model: <id>"; a 404 without "model" is a wrong base URL or route.
        return Kind.MODEL_NOT_FOUND if "model" in text else Kind.BAD_REQUEST
    if status == 429:
        return Kind.RATE_LIMITED
    if status in (503, 529):
        return Kind.OVERLOADED
    if 400 <= status < 500:
        return Kind.AUTH if etype == "billing_error" else Kind.BAD_REQUEST
    return default


def _int(value: object) -> int | None:
    """A count from the server, never below zero (a negative count would lower a bill)."""
    return max(value, 0) if type(value) is int else None


# --- stream translation --------------------------------------------------------------------------


class _ToolUse:
    """A `tool_use` block being streamed: its input arrives as JSON fragments."""

    __slots__ = ("call_id", "name", "pieces", "start_input")

    def __init__(self, call_id: str, name: str, start_input: str) -> None:
        self.call_id = call_id
        self.name = name
        self.start_input = start_input  # input given whole at the start, if any (dialect servers)
        self.pieces: list[str] = []


class AnthropicStreamTranslator:
    """Messages stream events in, provider events out; one instance per upstream response.

    A `tool_use` block is announced at its start (`ToolCallStarted`) and handed over complete at
    its stop (`ToolCallReady`, its `input_json_delta` fragments joined), or at the end of the
    stream if it never stopped (a reply cut at max_tokens).
    """

    __slots__ = (
        "_cache_read",
        "_cache_write",
        "_chars",
        "_final_usage",
        "_input",
        "_output",
        "_tool_uses",
        "done",
        "message_id",
        "started",
        "stop_reason",
    )

    def __init__(self) -> None:
        self._input = 0
        self._output = 0
        self._cache_read = 0
        self._cache_write = 0
        self._chars = 0  # streamed text, thinking and tool input, for an estimate if the stream breaks
        self._tool_uses: dict[int, _ToolUse] = {}  # open tool_use blocks by content block index
        self._final_usage = False  # a message_delta carried usage: output_tokens is final
        self.started = False  # message_start was seen
        self.done = False  # message_stop was seen: stop reading
        self.stop_reason: str | None = None
        self.message_id: str | None = None

    def feed(self, events: Sequence[ServerSentEvent], out: list[ProviderEvent]) -> None:
        """Translate a read's SSE events into `out`; raises ProviderError for in-stream errors,
        after the events that came before them."""
        for sse in events:
            if self.done:
                return
            self._event(sse, out)

    def _event(self, sse: ServerSentEvent, out: list[ProviderEvent]) -> None:
        data = sse.data
        if not data or data.isspace():
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            logger.warning("Anthropic stream sent an invalid event %r: %.300r", sse.event, data)
            raise self.error(Kind.STREAM) from exc
        if type(obj) is not dict:
            logger.warning("Anthropic stream sent a non-object event %r: %.300r", sse.event, data)
            raise self.error(Kind.STREAM)
        kind = obj.get("type") or sse.event
        if kind == "content_block_delta":  # the hot path: nearly every event is one
            self._delta(obj.get("delta"), out, obj.get("index"))
        elif kind == "error" or sse.event == "error":
            logger.warning("Anthropic reported an error mid-stream (message %s): %.2000s", self.message_id, data)
            raise self.error(classify_error(None, obj, default=Kind.STREAM))
        elif kind == "content_block_start":
            self._block_start(obj.get("content_block"), obj.get("index"), out)
        elif kind == "content_block_stop":
            index = obj.get("index")
            if type(index) is int and index in self._tool_uses:
                out.append(_ready(self._tool_uses.pop(index)))
        elif kind == "message_start":
            message = obj.get("message")
            if type(message) is dict:
                self.message_id = str(message.get("id") or "") or None
                self._take_usage(message.get("usage"))
            self.started = True
        elif kind == "message_delta":
            delta = obj.get("delta")
            if type(delta) is dict and delta.get("stop_reason"):
                self.stop_reason = str(delta["stop_reason"])
            if self._take_usage(obj.get("usage")):
                self._final_usage = True
        elif kind == "message_stop":
            self.done = True
        # ping and event types added later carry nothing for us.

    def finish(self) -> list[ProviderEvent]:
        """End of stream: a `ToolCallReady` per tool_use block still open, `Usage`, `Finished`; or
        TRUNCATED when message_stop never came."""
        if not self.done:
            raise self.error(Kind.TRUNCATED)
        reason = self.stop_reason
        if reason is None:
            logger.warning("Anthropic message %s ended without a stop reason", self.message_id)
            reason = "end_turn"
        ready: list[ProviderEvent] = [_ready(self._tool_uses[index]) for index in sorted(self._tool_uses)]
        return [*ready, self._usage(), Finished(reason=_STOP_REASONS.get(reason, reason))]

    def partial_usage(self) -> Usage | None:
        """Usage so far; None before message_start.

        Until the final message_delta the server's output count is the 1 of message_start, so a
        broken stream would bill almost nothing for what was already shown: estimate from the
        streamed characters instead (about four a token), flagged as estimated.
        """
        if not self.started:
            return None
        usage = self._usage()
        estimate = estimate_tokens(self._chars)
        if self._final_usage or estimate <= usage.output_tokens:
            return usage
        return Usage(
            input_tokens=usage.input_tokens,
            output_tokens=estimate,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            estimated=True,
        )

    def error(self, kind: ProviderErrorKind) -> StreamFailedError:
        """An error for this stream carrying the usage counted so far."""
        return StreamFailedError(kind, partial_usage=self.partial_usage())

    def _usage(self) -> Usage:
        return Usage(
            input_tokens=self._input,
            output_tokens=self._output,
            cache_read_tokens=self._cache_read,
            cache_write_tokens=self._cache_write,
        )

    def _take_usage(self, usage: object) -> bool:
        # Values are cumulative: overwrite, never add. Absent or null fields keep their value.
        if type(usage) is not dict:
            return False
        for name, slot in _USAGE_FIELDS:
            value = _int(usage.get(name))
            if value is not None:
                setattr(self, slot, value)
        return True

    def _delta(self, delta: object, out: list[ProviderEvent], index: object = None) -> None:
        if type(delta) is not dict:
            return
        dtype = delta.get("type")
        if dtype == "text_delta":
            text = delta.get("text")
            if text and type(text) is str:
                self._chars += len(text)
                add_text(out, text)
        elif dtype == "thinking_delta":
            thinking = delta.get("thinking")
            if thinking and type(thinking) is str:
                self._chars += len(thinking)
                add_reasoning(out, thinking)
        elif dtype == "input_json_delta":
            tool_use = self._tool_uses.get(index) if type(index) is int else None
            piece = delta.get("partial_json")
            if tool_use is None or type(piece) is not str:
                logger.warning("Anthropic message %s sent tool input outside a tool_use block", self.message_id)
                raise self.error(Kind.STREAM)
            self._chars += len(piece)
            tool_use.pieces.append(piece)
        # signature_delta (verifies thinking we never send back), citations_delta, new types.

    def _block_start(self, block: object, index: object, out: list[ProviderEvent]) -> None:
        if type(block) is not dict:
            return
        btype = block.get("type")
        if btype == "tool_use":
            name, call_id, start_input = block.get("name"), block.get("id"), block.get("input")
            if not name or type(name) is not str or type(index) is not int:
                logger.warning("Anthropic message %s sent a tool_use block without a name or index", self.message_id)
                raise self.error(Kind.STREAM)
            call_id = call_id if call_id and type(call_id) is str else generated_call_id(index)
            self._tool_uses[index] = _ToolUse(call_id, name, orjson.dumps(start_input).decode() if start_input else "")
            out.append(ToolCallStarted(call_id=call_id, name=name))
        # Blocks usually start empty and fill through deltas; keep any text they start with.
        elif btype == "text":
            self._delta({"type": "text_delta", "text": block.get("text")}, out)
        elif btype == "thinking":
            self._delta({"type": "thinking_delta", "thinking": block.get("thinking")}, out)
        # redacted_thinking and block types added later carry nothing to show.


def _ready(tool_use: _ToolUse) -> ToolCallReady:
    # Anthropic starts every block with `input: {}` and streams the input; a server that gives it
    # whole at the start streams nothing.
    streamed = "".join(tool_use.pieces)
    arguments = finished_arguments([streamed if streamed.strip() else tool_use.start_input])
    return ToolCallReady(call_id=tool_use.call_id, name=tool_use.name, arguments=arguments)
