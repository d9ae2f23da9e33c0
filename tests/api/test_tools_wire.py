"""Tool calls through real providers over HTTP: scripted model servers in each server's shape, the real
test MCP server. What parley sends the model server is checked as the server would read it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import create_session, send
from tests.api.tooling import Tools, decide, pending_call
from tests.conftest import client
from tests.support.scripted_anthropic import ScriptedAnthropic, message_stream, scripted_tool_use_id, tool_use_stream
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream, scripted_call_id, tool_call_stream

SHAPES = ["vllm", "llama-cpp-python", "ollama"]


@pytest.mark.parametrize("shape", SHAPES)
def test_an_approved_call_on_an_openai_compatible_server(tools: Tools, shape: Any) -> None:
    with ScriptedUpstream() as upstream:
        upstream.enqueue(
            tool_call_stream([("t__record", '{"note": "wire"}')], "Noting.", shape=shape),
            TokenStream(tokens=["Done", "."]),
        )
        server = tools.start_on(MCP_LLM_BASE_URL=upstream.base_url)
        with client(server, tools.tenants.a1) as c:
            sid = create_session(c)
            asked = pending_call(send(c, sid, "note wire"))
            assert asked["toolUseId"] == scripted_call_id(shape, 0, "t__record")
            second = decide(c, sid, asked["executionId"], approved=True)
        first, follow_up = (r.json for r in upstream.requests)
    assert second.text == "Done."
    assert tools.ran() == ["wire"]
    offered = {t["function"]["name"]: t for t in first["tools"]}
    assert offered["t__record"]["function"]["description"] == "Record a note in the log file."
    assert offered["t__record"]["function"]["parameters"]["required"] == ["note"]
    assert first["tool_choice"] == "auto"
    call, result = follow_up["messages"][-2:]
    assert call["role"] == "assistant"
    assert call["content"] == "Noting."
    assert call["tool_calls"][0]["function"] == {"name": "t__record", "arguments": '{"note":"wire"}'}
    assert result == {"role": "tool", "tool_call_id": asked["toolUseId"], "content": "recorded: wire"}


def test_a_denied_call_on_an_openai_compatible_server(tools: Tools) -> None:
    with ScriptedUpstream() as upstream:
        upstream.enqueue(tool_call_stream([("t__record", '{"note": "no"}')]), TokenStream(tokens=["OK"]))
        server = tools.start_on(MCP_LLM_BASE_URL=upstream.base_url)
        with client(server, tools.tenants.a1) as c:
            sid = create_session(c)
            asked = pending_call(send(c, sid, "note no"))
            decide(c, sid, asked["executionId"], approved=False)
        follow_up = upstream.requests[1].json
    assert tools.ran() == []
    result = follow_up["messages"][-1]
    assert result["role"] == "tool"
    assert "declined" in result["content"]


def test_a_forced_tool_on_an_openai_compatible_server(tools: Tools) -> None:
    tools.configure(tools={"record": {"requireApproval": "never"}})
    with ScriptedUpstream() as upstream:
        upstream.enqueue(
            tool_call_stream([("t__record", '{"note": "forced"}')], finish_reason="stop"), TokenStream(tokens=["ok"])
        )
        server = tools.start_on(MCP_LLM_BASE_URL=upstream.base_url)
        with client(server, tools.tenants.a1) as c:
            stream = send(c, create_session(c), "note forced", toolChoice={"name": "t__record"})
        first, second = (r.json for r in upstream.requests)
    assert stream.text == "ok"  # a forced call that vLLM ends with `stop` still runs
    assert tools.ran() == ["forced"]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "t__record"}}
    assert "tools" not in second  # the forced call done, the model answers
    assert "tool_choice" not in second


def test_an_approved_call_on_anthropic(tools: Tools) -> None:
    with ScriptedAnthropic() as anthropic:
        anthropic.enqueue(tool_use_stream([("t__record", '{"note": "claude"}')], "Noting."), message_stream(["Done."]))
        server = tools.start_on(
            MCP_LLM_PROVIDER="anthropic", ANTHROPIC_API_KEY="sk-ant-test-key-123", ANTHROPIC_BASE_URL=anthropic.base_url
        )
        with client(server, tools.tenants.a1) as c:
            sid = create_session(c)
            asked = pending_call(send(c, sid, "note claude"))
            assert asked["toolUseId"] == scripted_tool_use_id(0)
            second = decide(c, sid, asked["executionId"], approved=True)
        first, follow_up = (r.json for r in anthropic.requests)
    assert second.text == "Done."
    assert tools.ran() == ["claude"]
    assert "t__record" in {t["name"] for t in first["tools"]}
    said, answered = follow_up["messages"][-2:]
    assert said["role"] == "assistant"
    assert {k: v for k, v in said["content"][-1].items() if k != "cache_control"} == {
        "type": "tool_use",
        "id": asked["toolUseId"],
        "name": "t__record",
        "input": {"note": "claude"},
    }
    assert answered["role"] == "user"
    assert answered["content"][0]["type"] == "tool_result"
    assert answered["content"][0]["tool_use_id"] == asked["toolUseId"]
    assert json.dumps(answered["content"][0]["content"]).find("recorded: claude") >= 0
