"""Stored rows -> provider messages.

Invariant: history read from the database EXCLUDES the current user message; the caller appends
it from memory. Reasoning is never sent back to a model.

A reply that used tools is one stored message whose parts hold its rounds in order: text and
tool calls, then the calls' results, then the next round. `replay_reply` turns those parts back
into what a provider sends: an assistant message with the round's calls, a `tool` message with
one result per call (in call order), and so on. A call without a stored result (its turn was
interrupted while it ran) gets a synthetic error result: every provider requires one per call.
A result is stored as people see it (up to its server's cap); the model reads at most
MODEL_LIMIT bytes of it (`for_model`), cut here, the same way every time it is replayed.

Stored part shapes (the API shows them as they are):
    {"type": "text", "text"}  {"type": "reasoning", "text"}
    {"type": "tool_call", "toolUseId", "toolName", "input", "executionId"}
    {"type": "tool_result", "toolUseId", "toolName", "output", "isError", "truncated"}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from parley.providers.base import ChatMessage, Part, TextPart, ToolCallPart, ToolResultPart
from parley.tools.output import for_model

HistoryRow = tuple[str, str | None, Any]  # (role, content, content_parts)

NO_RESULT = "No result was recorded for this call: it was interrupted, and whether it ran is unknown."


def build_history(rows: Iterable[HistoryRow]) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    append = messages.append
    for role, content, parts in rows:  # runs once per stored message: kept tight
        if parts is not None and role == "assistant":  # may hold tool parts (see history_rows)
            messages += replay_reply(parts)
        elif (role == "user" or role == "assistant") and content:
            append(ChatMessage(role=role, parts=(TextPart(text=content),)))  # type: ignore[arg-type]
        # other rows (system): the system prompt is rebuilt for every turn
    return messages


def replay_reply(parts: Sequence[Any]) -> list[ChatMessage]:
    """The provider messages of one stored reply (see the module docstring)."""
    out: list[ChatMessage] = []
    said: list[Part] = []  # the current round's text and calls
    calls: list[str] = []  # their ids, in order
    results: dict[str, ToolResultPart] = {}
    answered = False  # a result arrived since the round's last call

    def close_round() -> None:
        nonlocal answered
        if said:
            out.append(ChatMessage(role="assistant", parts=tuple(said)))
        if calls:
            replies = tuple(results.get(c) or ToolResultPart(call_id=c, output=NO_RESULT, is_error=True) for c in calls)
            out.append(ChatMessage(role="tool", parts=replies))
        said.clear()
        calls.clear()
        results.clear()
        answered = False

    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if calls:
                close_round()
            if part.get("text"):
                said.append(TextPart(text=str(part["text"])))
        elif kind == "tool_call":
            if answered:
                close_round()
            call_id = str(part.get("toolUseId") or "")
            arguments = part.get("input")
            said.append(
                ToolCallPart(
                    call_id=call_id,
                    name=str(part.get("toolName") or ""),
                    arguments=arguments if isinstance(arguments, dict) else {},
                )
            )
            calls.append(call_id)
        elif kind == "tool_result":
            call_id = str(part.get("toolUseId") or "")
            output = for_model(str(part.get("output") or ""))
            results[call_id] = ToolResultPart(call_id=call_id, output=output, is_error=bool(part.get("isError")))
            answered = True
        # reasoning is display-only; unknown kinds are skipped
    close_round()
    return out
