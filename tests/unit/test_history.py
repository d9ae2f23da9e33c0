"""The history builder, including the nine cases of the reference's history tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.chat.history import build_history
from parley.errors import ToolUseInHistoryError
from parley.providers.base import ChatMessage


def text_of(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.plain_text) for m in messages]


def test_empty_history_gives_no_messages() -> None:
    assert build_history("s1", []) == []


def test_user_and_assistant_rows_map_to_messages() -> None:
    rows = [("user", "hi", None), ("assistant", "hello", None)]
    assert text_of(build_history("s1", rows)) == [("user", "hi"), ("assistant", "hello")]


def test_system_rows_are_skipped() -> None:
    rows = [("system", "be nice", None), ("user", "hi", None)]
    assert text_of(build_history("s1", rows)) == [("user", "hi")]


def test_assistant_row_without_content_is_skipped() -> None:
    rows = [("user", "hi", None), ("assistant", None, None), ("assistant", "", None)]
    assert text_of(build_history("s1", rows)) == [("user", "hi")]


def test_user_row_without_content_is_skipped() -> None:
    rows = [("user", None, None), ("user", "", None), ("assistant", "ok", None)]
    assert text_of(build_history("s1", rows)) == [("assistant", "ok")]


@pytest.mark.parametrize("role", ["tool_use", "tool_result"])
def test_tool_rows_are_refused(role: str) -> None:
    with pytest.raises(ToolUseInHistoryError):
        build_history("s1", [("user", "hi", None), (role, None, None)])


def test_tool_parts_inside_a_message_are_refused() -> None:
    parts = [{"type": "tool_call", "call_id": "c1", "name": "x", "arguments": {}}]
    with pytest.raises(ToolUseInHistoryError):
        build_history("s1", [("assistant", "calling", parts)])


def test_the_error_names_the_session() -> None:
    with pytest.raises(ToolUseInHistoryError) as info:
        build_history("session-42", [("tool_use", None, None)])
    assert "session-42" in info.value.message
    assert info.value.code == "tool_use_in_history"


def test_order_is_kept() -> None:
    rows = [("user", "1", None), ("assistant", "2", None), ("user", "3", None), ("assistant", "4", None)]
    assert [m.plain_text for m in build_history("s1", rows)] == ["1", "2", "3", "4"]


def test_reasoning_is_never_sent_back() -> None:
    parts = [{"type": "reasoning", "text": "secret thoughts"}, {"type": "text", "text": "answer"}]
    (message,) = build_history("s1", [("assistant", "answer", parts)])
    assert message.plain_text == "answer"
    assert "secret" not in repr(message)


_roles = st.sampled_from(["user", "assistant", "system"])
_rows = st.lists(st.tuples(_roles, st.one_of(st.none(), st.text(max_size=20)), st.none()), max_size=30)


@given(_rows)
def test_output_is_the_nonempty_user_and_assistant_rows_in_order(rows: list[tuple[str, str | None, None]]) -> None:
    expected = [(r, c) for r, c, _ in rows if r in ("user", "assistant") and c]
    assert text_of(build_history("s", rows)) == expected
