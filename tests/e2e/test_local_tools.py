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
from parley.local.demo_tools.errors import CalculationError
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
    notes = e2e_tools.notes
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
    notes = e2e_tools.notes
    before = notes.read_text().count("\n") if notes.exists() else 0
    second = tools_api.decide(sid, asked["executionId"], approved=False)
    assert_answered(second)
    assert second.first("tool_result")["isError"] is True
    after = notes.read_text().count("\n") if notes.exists() else 0
    assert after == before
    assert asked["input"]["text"] not in (notes.read_text() if notes.exists() else "")


CALCULATION_TRIES = 25


def calculator_says(expression: str) -> tuple[bool, str]:
    """(isError, output) of the demo calculator for `expression`."""
    try:
        return False, calculate(expression).as_text()
    except CalculationError as exc:
        return True, exc.message


@pytest.mark.timeout(400)
def test_a_forced_calculation_runs_without_asking_and_its_result_carries_the_number(
    e2e_tools: E2E, tools_api: Api
) -> None:
    """The model fills in the expression itself, sampling as llama-cpp-python does by default: for
    "What is 2+3*4?" it writes 2+3*4 (or 2 + 3 * 4) about once in four forced calls, and otherwise
    another expression, one that does not parse, or arguments that are not JSON. Every try must hold
    parley's side of it: the call runs without asking and the result given is what the calculator
    makes of whatever was written (a try that missed is stopped once its result is in). Within
    CALCULATION_TRIES tries the model writes 2+3*4, and its answer follows the result, 14."""
    written = []
    for _ in range(CALCULATION_TRIES):
        sid = tools_api.create_session()["id"]

        def stop_a_miss(event: str, data: dict[str, Any], turn: Turn, sid: str = sid) -> None:
            if event == "tool_result" and not data["output"].endswith("= 14"):
                tools_api.interrupt(sid)

        turn = tools_api.turn(sid, "What is 2+3*4?", stop_a_miss, toolChoice={"name": "demo__calculate"})
        assert turn.status == 200, turn.body
        assert "approval_required" not in turn.types
        result = turn.first("tool_result")
        started = [data for event, data in turn.events if event == "tool_use_start"]
        if not started:  # arguments that are not JSON never reach the tool
            assert result["isError"] is True, result
            assert result["output"].startswith("The arguments are not valid for demo__calculate"), result
            written.append(None)
            continue
        expression = started[0]["input"]["expression"]
        written.append(expression)
        assert (result["isError"], result["output"]) == calculator_says(expression)
        if expression.replace(" ", "") == "2+3*4":
            assert result["output"].endswith("= 14")
            assert_answered(turn)
            follow_up(e2e_tools, result["output"])  # the model read the result before it answered
            return
    pytest.fail(f"in {CALCULATION_TRIES} forced calls the model never wrote 2+3*4; it wrote {written}")
