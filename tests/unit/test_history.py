"""The history builder: stored rows, and replies with tool rounds, as providers are sent them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from parley.chat.history import NO_RESULT, build_history
from parley.providers.base import ChatMessage, TextPart, ToolCallPart, ToolResultPart


def text_of(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.plain_text) for m in messages]


def test_empty_history_gives_no_messages() -> None:
    assert build_history([]) == []


def test_user_and_assistant_rows_map_to_messages() -> None:
    rows = [("user", "hi", None), ("assistant", "hello", None)]
    assert text_of(build_history(rows)) == [("user", "hi"), ("assistant", "hello")]


def test_system_rows_are_skipped() -> None:
    rows = [("system", "be nice", None), ("user", "hi", None)]
    assert text_of(build_history(rows)) == [("user", "hi")]


def test_assistant_row_without_content_is_skipped() -> None:
    rows = [("user", "hi", None), ("assistant", None, None), ("assistant", "", None)]
    assert text_of(build_history(rows)) == [("user", "hi")]


def test_user_row_without_content_is_skipped() -> None:
    rows = [("user", None, None), ("user", "", None), ("assistant", "ok", None)]
    assert text_of(build_history(rows)) == [("assistant", "ok")]


def call(call_id: str, name: str = "t__echo", **arguments: object) -> dict[str, object]:
    return {"type": "tool_call", "toolUseId": call_id, "toolName": name, "input": arguments, "executionId": "e"}


def result(call_id: str, output: str, *, error: bool = False) -> dict[str, object]:
    return {"type": "tool_result", "toolUseId": call_id, "toolName": "t__echo", "output": output, "isError": error}


def test_a_reply_with_tool_rounds_replays_as_calls_then_results_then_the_answer() -> None:
    parts = [
        {"type": "reasoning", "text": "let me look"},
        {"type": "text", "text": "Checking."},
        call("c1", text="a"),
        result("c1", "a"),
        {"type": "text", "text": "It says a."},
    ]
    messages = build_history([("user", "echo a", None), ("assistant", "Checking.\n\nIt says a.", parts)])
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    said = messages[1].parts
    assert said == (TextPart(text="Checking."), ToolCallPart(call_id="c1", name="t__echo", arguments={"text": "a"}))
    assert messages[2].parts == (ToolResultPart(call_id="c1", output="a"),)
    assert messages[3].plain_text == "It says a."


def test_parallel_results_are_replayed_in_call_order() -> None:
    parts = [call("c1"), call("c2"), result("c2", "second"), result("c1", "first", error=True)]
    _, tool = build_history([("assistant", "", parts)])
    assert tool.parts == (
        ToolResultPart(call_id="c1", output="first", is_error=True),
        ToolResultPart(call_id="c2", output="second"),
    )


def test_two_rounds_of_calls_stay_two_rounds() -> None:
    parts = [call("c1"), result("c1", "1"), call("c2"), result("c2", "2")]
    assert [m.role for m in build_history([("assistant", "", parts)])] == ["assistant", "tool", "assistant", "tool"]


def test_a_call_without_a_result_gets_an_error_result() -> None:
    parts = [call("c1"), call("c2"), result("c1", "done")]
    messages = build_history([("assistant", "", parts), ("user", "and now?", None)])
    assert [m.role for m in messages] == ["assistant", "tool", "user"]
    missing = messages[1].parts[1]
    assert isinstance(missing, ToolResultPart)
    assert (missing.call_id, missing.is_error, missing.output) == ("c2", True, NO_RESULT)


def test_rows_of_other_roles_are_skipped() -> None:
    rows = [("user", "hi", None), ("tool_use", None, None), ("tool_result", "x", None), ("assistant", "ok", None)]
    assert text_of(build_history(rows)) == [("user", "hi"), ("assistant", "ok")]


_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=5)),
    st.builds(lambda i: call(f"c{i}"), st.integers(0, 4)),
    st.builds(lambda i: result(f"c{i}", "r"), st.integers(0, 4)),
    st.just({"type": "reasoning", "text": "hm"}),
)


@given(st.lists(_part, max_size=25))
def test_every_replayed_call_is_answered_right_after_its_message(parts: list[dict[str, object]]) -> None:
    messages = build_history([("assistant", "", parts)])
    for i, message in enumerate(messages):
        calls = [p.call_id for p in message.parts if isinstance(p, ToolCallPart)]
        assert message.parts, "no empty message"
        if message.role == "tool":
            assert messages[i - 1].role == "assistant"
        if calls:
            answered = messages[i + 1]
            assert answered.role == "tool"
            assert [p.call_id for p in answered.parts if isinstance(p, ToolResultPart)] == calls


def test_order_is_kept() -> None:
    rows = [("user", "1", None), ("assistant", "2", None), ("user", "3", None), ("assistant", "4", None)]
    assert [m.plain_text for m in build_history(rows)] == ["1", "2", "3", "4"]


def test_reasoning_is_never_sent_back() -> None:
    parts = [{"type": "reasoning", "text": "secret thoughts"}, {"type": "text", "text": "answer"}]
    (message,) = build_history([("assistant", "answer", parts)])
    assert message.plain_text == "answer"
    assert "secret" not in repr(message)


_roles = st.sampled_from(["user", "assistant", "system"])
_rows = st.lists(st.tuples(_roles, st.one_of(st.none(), st.text(max_size=20)), st.none()), max_size=30)


@given(_rows)
def test_output_is_the_nonempty_user_and_assistant_rows_in_order(rows: list[tuple[str, str | None, None]]) -> None:
    expected = [(r, c) for r, c, _ in rows if r in ("user", "assistant") and c]
    assert text_of(build_history(rows)) == expected
