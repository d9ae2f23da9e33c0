"""One route test per provider path: MCP_LLM_PROVIDER really selects the provider.

The reference shipped a flag check that silently always took one path; here each value of
MCP_LLM_PROVIDER drives a full turn through the HTTP API against its own scripted server, and the
other server must see nothing.
"""

from __future__ import annotations

from decimal import Decimal

from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_anthropic import ScriptedAnthropic, message_stream
from tests.support.scripted_upstream import ScriptedUpstream, token_stream
from tests.support.sse_client import FrameReader, read_stream


def test_openai_compatible_path(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedUpstream() as openai, ScriptedAnthropic() as anthropic:
        openai.set_default(token_stream(3, usage=True))
        server = make_server(
            None,
            MCP_LLM_PROVIDER="openai-compatible",
            MCP_LLM_BASE_URL=openai.base_url,
            ANTHROPIC_BASE_URL=anthropic.base_url,
            ANTHROPIC_API_KEY="sk-ant-unused-key",
        )
        with client(server, tenants.a1) as c:
            created = c.post("/api/v1/ai/sessions", json={}).json()
            assert created["model"] == "test-model"
            with c.stream("POST", f"/api/v1/ai/sessions/{created['id']}/messages", json={"content": "hi"}) as r:
                stream = read_stream(r)
        assert stream.types[-2:] == ["message_end", "done"]
        assert len(openai.requests) == 1
        assert openai.requests[0].json["model"] == "test-model"
        assert anthropic.requests == []


def test_anthropic_path_with_cached_history_and_exact_cost(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedUpstream() as openai, ScriptedAnthropic() as anthropic:
        anthropic.enqueue(
            message_stream(["Hello", " there"], input_tokens=20, cache_write=1000, output_tokens=10),
            message_stream(["Again"], input_tokens=15, cache_read=1000, cache_write=40, output_tokens=5),
        )
        server = make_server(
            None,
            MCP_LLM_PROVIDER="anthropic",
            ANTHROPIC_API_KEY="sk-ant-test-key-123",
            ANTHROPIC_BASE_URL=anthropic.base_url,
            MCP_LLM_BASE_URL=openai.base_url,
        )
        with client(server, tenants.a1) as c:
            created = c.post("/api/v1/ai/sessions", json={}).json()
            assert created["model"] == "claude-sonnet-4-5"
            sid = created["id"]
            ends = []
            for content in ("first question", "second question"):
                with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": content}) as r:
                    stream = read_stream(r)
                assert stream.types[-2:] == ["message_end", "done"], stream.types
                ends.append(stream.of("message_end")[0].data)
            detail = c.get(f"/api/v1/ai/sessions/{sid}").json()
        assert openai.requests == []
        assert len(anthropic.requests) == 2
        second = anthropic.requests[1]
        assert second.headers["x-api-key"] == "sk-ant-test-key-123"
        body = second.json
        assert body["model"] == "claude-sonnet-4-5"
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
        # The stable prefix (the first turn's answer) carries a breakpoint; the new message does not.
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert "cache_control" not in body["messages"][2]["content"][-1]
        # Sonnet: $3 in, $15 out, cache write 1.25x, cache read 0.1x (per million tokens).
        # Turn 1: 20*3 + 1000*3.75 + 10*15 = 3960 -> $0.00396; turn 2: 15*3 + 1000*0.3 + 40*3.75 + 5*15 = 570.
        assert [e["costUsd"] for e in ends] == ["0.00396", "0.00057"]
        assert ends[0]["inputTokens"] == 1020
        assert ends[0]["cacheWriteTokens"] == 1000
        assert ends[1]["cacheReadTokens"] == 1000
        assert Decimal(detail["session"]["totalCostCents"]) == Decimal("0.453")
        assistant = [m for m in detail["messages"] if m["role"] == "assistant"]
        assert [m["content"] for m in assistant] == ["Hello there", "Again"]
        assert assistant[1]["cacheReadTokens"] == 1000


def test_a_session_may_ask_for_an_allowed_model_only(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedAnthropic() as anthropic:
        anthropic.set_default(message_stream(["ok"]))
        server = make_server(
            None,
            MCP_LLM_PROVIDER="anthropic",
            ANTHROPIC_API_KEY="sk-ant-test-key-123",
            ANTHROPIC_BASE_URL=anthropic.base_url,
            PARLEY_ALLOWED_MODELS="claude-haiku-4-5",
        )
        with client(server, tenants.a1) as c:
            refused = c.post("/api/v1/ai/sessions", json={"model": "claude-opus-4-5"})
            assert refused.status_code == 400
            assert refused.json()["code"] == "model_not_allowed"
            assert "claude-haiku-4-5" in refused.json()["error"]
            created = c.post("/api/v1/ai/sessions", json={"model": "claude-haiku-4-5"}).json()
            assert created["model"] == "claude-haiku-4-5"
            with c.stream("POST", f"/api/v1/ai/sessions/{created['id']}/messages", json={"content": "hi"}) as r:
                assert read_stream(r).types[-1] == "done"
        assert anthropic.requests[-1].json["model"] == "claude-haiku-4-5"


def test_plan_routes_answer_501_on_both_providers_without_tool_servers(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    with ScriptedAnthropic() as anthropic:
        for env in (
            {
                "MCP_LLM_PROVIDER": "anthropic",
                "ANTHROPIC_API_KEY": "sk-ant-key-12345",
                "ANTHROPIC_BASE_URL": anthropic.base_url,
            },
            {"MCP_LLM_PROVIDER": "openai-compatible"},
        ):
            server = make_server(None, **env)
            with client(server, tenants.a1) as c:
                sid = c.post("/api/v1/ai/sessions", json={}).json()["id"]
                for route, body in (
                    ("pause", {"paused": True}),
                    ("approve-plan", {"approved": True}),
                    ("abort-plan", None),
                ):
                    r = c.post(f"/api/v1/ai/sessions/{sid}/{route}", json=body)
                    assert r.status_code == 501, (env, route, r.text)
                    assert r.json()["code"] == "NOT_SUPPORTED_ON_PROVIDER"
                    assert "PARLEY_MCP_CONFIG" in r.json()["error"]


def _anthropic_server(make_server: ServerFactory, anthropic: ScriptedAnthropic, **env: str) -> object:
    return make_server(
        None,
        MCP_LLM_PROVIDER="anthropic",
        ANTHROPIC_API_KEY="sk-ant-test-key-123",
        ANTHROPIC_BASE_URL=anthropic.base_url,
        **env,
    )


def test_anthropic_path_streams_thinking_as_reasoning_apart_from_the_answer(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    with ScriptedAnthropic() as anthropic:
        anthropic.enqueue(message_stream(["The answer."], thinking=["Let me ", "think."], ping_every=1))
        server = _anthropic_server(make_server, anthropic)
        with client(server, tenants.a1) as c:
            sid = c.post("/api/v1/ai/sessions", json={}).json()["id"]
            with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "why?"}) as r:
                stream = read_stream(r)
            assert [f.data["delta"] for f in stream.of("reasoning_delta")] == ["Let me ", "think."]
            assert stream.text == "The answer."
            (_, reply) = c.get(f"/api/v1/ai/sessions/{sid}").json()["messages"]
            assert (reply["content"], reply["reasoning"]) == ("The answer.", "Let me think.")
            with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "and?"}) as r:
                read_stream(r)
        sent_back = anthropic.requests[1].json["messages"][1]["content"]
        assert [block["type"] for block in sent_back] == ["text"]  # reasoning is never sent back


def test_anthropic_overload_mid_stream_is_a_sanitised_error_event(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedAnthropic() as anthropic:
        anthropic.enqueue(message_stream(["Partial"], error="overloaded_error"))
        server = _anthropic_server(make_server, anthropic)
        with client(server, tenants.a1) as c:
            sid = c.post("/api/v1/ai/sessions", json={}).json()["id"]
            with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "hi"}) as r:
                stream = read_stream(r)
        assert stream.types[-2:] == ["error", "done"]
        error = stream.of("error")[0].data
        assert error["code"] == "upstream_overloaded"
        assert "scripted" not in error["message"]  # the upstream's text stays in the log
        assert len(anthropic.requests) == 1  # text had been relayed: no retry


def test_anthropic_stop_closes_the_upstream_connection(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedAnthropic() as anthropic:
        anthropic.enqueue(message_stream([f"w{i} " for i in range(200)], delay=0.02))
        server = _anthropic_server(make_server, anthropic)
        with client(server, tenants.a1) as c:
            sid = c.post("/api/v1/ai/sessions", json={}).json()["id"]
            with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "long"}) as r:
                reader = FrameReader(r)
                reader.take(5)
                assert c.post(f"/api/v1/ai/sessions/{sid}/interrupt").status_code == 200
                rest = [f.event for f in reader.rest()]
            assert rest[-1] == "done"
            assert "error" not in rest
            assert "message_end" not in rest
            assert anthropic.wait_closed(timeout=3)
            (_, reply) = c.get(f"/api/v1/ai/sessions/{sid}").json()["messages"]
            assert reply["finishReason"] == "interrupted"
            assert reply["usageEstimated"] is True
