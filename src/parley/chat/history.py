"""Stored rows -> provider messages.

Invariant: history read from the database EXCLUDES the current user message; the caller appends
it from memory. Reasoning is never sent back to a model. Tool rows cannot be replayed on the
chat-only path, so they are refused explicitly (`ToolUseInHistoryError`), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from parley.errors import ToolUseInHistoryError
from parley.providers.base import ChatMessage, TextPart

_TOOL_ROLES = frozenset({"tool_use", "tool_result"})
_TOOL_PART_TYPES = frozenset({"tool_call", "tool_result"})

HistoryRow = tuple[str, str | None, Any]  # (role, content, content_parts)


def build_history(session_id: str, rows: Iterable[HistoryRow]) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    append = messages.append
    for role, content, parts in rows:  # runs once per stored message: kept tight
        if role == "user" or role == "assistant":
            if parts is not None and _has_tool_parts(parts):
                raise ToolUseInHistoryError(session_id)
            if content:
                append(ChatMessage(role=role, parts=(TextPart(text=content),)))  # type: ignore[arg-type]
        elif role in _TOOL_ROLES or _has_tool_parts(parts):
            raise ToolUseInHistoryError(session_id)
        # other rows (system): the system prompt is rebuilt for every turn
    return messages


def _has_tool_parts(parts: Any) -> bool:
    if not isinstance(parts, list):
        return False
    return any(isinstance(p, dict) and p.get("type") in _TOOL_PART_TYPES for p in parts)
