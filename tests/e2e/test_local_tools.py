"""Tool calls on the real local model (llama-cpp-python + SmolLM2-135M) with the demo MCP server.

The small model calls a tool only when `tool_choice` forces one (see the captured streams in
tests/fixtures/openai/llama-cpp-python-tool-*.sse), so each test forces the tool, as a person does
with `/tool`. The model fills in the arguments; parley asks, runs, and sends the result back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.local.demo_tools.calculator import calculate
from tests.e2e.conftest import E2E, Api, Turn

pytestmark = pytest.mark.e2e


@pytest.fixture
def tools_api(e2e_tools: E2E) -> Any:
    client = e2e_tools.api()
    yield client
    client.close()


def follow_up(e2e: E2E, tool_output: str) -> dict[str, Any]:
    """The model request that carried this tool result (as a `tool` message, or as text when the
    request offered no tools)."""
    for body in reversed(e2e.proxy.chat_requests()):
        if any(tool_output in str(m.get("content")) for m in body["messages"][-2:]):
            return body
    raise AssertionError(f"no model request carried the tool result {tool_output!r}")


def assert_answered(turn: Turn) -> None:
    assert turn.status == 200, turn.body
    assert turn.types[-2:] == ["message_end", "done"], turn.events
    assert "error" not in turn.types, turn.events
    assert turn.text.strip()


def test_a_forced_note_is_approved_saved_and_answered(e2e_tools: E2E, tools_api: Api) -> None:
    sid = tools_api.create_session()["id"]
    first = tools_api.turn(sid, "Save a note that says: buy oat milk", toolChoice={"name": "demo__add_note"})
    assert first.status == 200, first.body
    assert first.types[-3:] == ["approval_required", "message_end", "done"], first.types
    asked = first.first("approval_required")
    assert asked["toolName"] == "demo__add_note"
    written = asked["input"]["text"]
    assert isinstance(written, str)
    assert written.strip()
    notes = e2e_tools.data_dir / "demo-tools" / "notes.jsonl"
    assert not notes.exists()  # nothing is written before the decision

    second = tools_api.decide(sid, asked["executionId"], approved=True)
    assert_answered(second)
    assert second.types[:3] == ["message_start", "tool_use_start", "tool_result"], second.types
    result = second.first("tool_result")
    assert result["isError"] is False, result
    saved = [json.loads(line) for line in notes.read_text().splitlines()]
    assert [note["text"] for note in saved] == [written]
    # The model read the result before it answered.
    request = follow_up(e2e_tools, result["output"])
    assert request["messages"][-2]["tool_calls"][0]["function"]["name"] == "demo__add_note"
    assert request["messages"][-2]["content"] == ""


def test_a_denied_note_is_never_saved(e2e_tools: E2E, tools_api: Api) -> None:
    sid = tools_api.create_session()["id"]
    first = tools_api.turn(sid, "Save a note that says: secret plan", toolChoice={"name": "demo__add_note"})
    asked = first.first("approval_required")
    before = (
        (e2e_tools.data_dir / "demo-tools" / "notes.jsonl").read_text().count("\n")
        if (e2e_tools.data_dir / "demo-tools" / "notes.jsonl").exists()
        else 0
    )
    second = tools_api.decide(sid, asked["executionId"], approved=False)
    assert_answered(second)
    assert second.first("tool_result")["isError"] is True
    notes = e2e_tools.data_dir / "demo-tools" / "notes.jsonl"
    after = notes.read_text().count("\n") if notes.exists() else 0
    assert after == before
    assert asked["input"]["text"] not in (notes.read_text() if notes.exists() else "")


def test_a_forced_calculation_runs_without_asking_and_gives_the_right_number(e2e_tools: E2E, tools_api: Api) -> None:
    sid = tools_api.create_session()["id"]
    turn = tools_api.turn(sid, "What is 2+3*4?", toolChoice={"name": "demo__calculate"})
    assert_answered(turn)
    assert "approval_required" not in turn.types
    expression = turn.first("tool_use_start")["input"]["expression"]
    result = turn.first("tool_result")
    assert result["isError"] is False, result
    # Whatever expression the model wrote, the answer it is given is that expression's value.
    assert result["output"] == calculate(expression).as_text()
    if expression.replace(" ", "") == "2+3*4":
        assert result["output"].endswith("= 14")
    follow_up(e2e_tools, result["output"])
