"""Anthropic wire translation: golden transcripts split anywhere, usage, stop reasons, requests.

Fixtures in tests/fixtures/anthropic are written by hand after the Messages streaming format
(reference/protocols-security.md §A.7): `<name>.sse` is a response body, `<name>.json` the
expected events, the error code raised at the end (or null) and, for errors, the usage
attached to the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.anthropic_wire import (
    ANCHOR_EVERY,
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    build_request,
    classify_error,
)
from parley.providers.base import (
    ChatMessage,
    Finished,
    ForcedTool,
    ProviderEvent,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolCallReady,
    ToolCallStarted,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
    Usage,
)
from parley.providers.http import StreamFailedError
from parley.providers.sse import ServerSentEvent, SSEDecoder
from tests.support.events import feed_one, from_fixture

K = ProviderErrorKind
FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.sse"))
REQUIRED = {
    "plain-text",
    "thinking-then-text",
    "pings-and-comments",
    "overloaded-mid-stream",
    "max-tokens",
    "cache-usage",
    "final-event-no-blank-line",
    "tool-use",
    "tool-use-parallel",
    "tool-use-empty-input",
    "tool-use-cut-at-max-tokens",
}

Outcome = tuple[list[ProviderEvent], str | None, Usage | None]


def load(name: str) -> tuple[bytes, Outcome]:
    spec = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    partial = spec["partial_usage"]
    expected = (
        [from_fixture(e) for e in spec["events"]],
        spec["error"],
        Usage(**partial) if partial is not None else None,
    )
    return (FIXTURES / f"{name}.sse").read_bytes(), expected


def run(chunks: list[bytes]) -> Outcome:
    """Decode and translate like the provider does: events, error code, usage on the error."""
    decoder = SSEDecoder()
    translator = AnthropicStreamTranslator()
    events: list[ProviderEvent] = []
    try:
        for chunk in chunks:
            for sse in decoder.feed(chunk):
                events.extend(feed_one(translator, sse))
            if translator.done:
                break
        else:
            for sse in decoder.finish():
                events.extend(feed_one(translator, sse))
        events.extend(translator.finish())
    except StreamFailedError as exc:
        return events, exc.kind.value, exc.partial_usage
    return events, None, None


def test_every_fixture_has_expectations_and_the_required_ones_exist() -> None:
    assert set(NAMES) >= REQUIRED
    for name in NAMES:
        assert (FIXTURES / f"{name}.json").exists(), name


def test_the_no_blank_line_fixture_really_lacks_it() -> None:
    assert not (FIXTURES / "final-event-no-blank-line.sse").read_bytes().endswith(b"\n")
    assert b"\r\n" in (FIXTURES / "pings-and-comments.sse").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_fixture_whole(name: str) -> None:
    raw, expected = load(name)
    assert run([raw]) == expected


@pytest.mark.parametrize("name", NAMES)
def test_fixture_split_at_every_byte_offset(name: str) -> None:
    raw, expected = load(name)
    for i in range(len(raw) + 1):
        assert run([raw[:i], raw[i:]]) == expected, f"split at {i}"


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), cuts=st.lists(st.integers(0, 20_000), min_size=2, max_size=40))
def test_fixture_split_into_many_pieces(name: str, cuts: list[int]) -> None:
    raw, expected = load(name)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert run(pieces) == expected


# --- translator details ---------------------------------------------------------------------------


def sse(obj: Any, event: str = "message") -> ServerSentEvent:
    return ServerSentEvent(event=event, data=obj if isinstance(obj, str) else orjson.dumps(obj).decode())


def start(**usage: int) -> ServerSentEvent:
    return sse({"type": "message_start", "message": {"id": "msg_1", "usage": usage}}, "message_start")


def delta(stop_reason: str | None = None, **usage: int | None) -> ServerSentEvent:
    body: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": stop_reason}}
    if usage:
        body["usage"] = usage
    return sse(body, "message_delta")


def text(t: str) -> ServerSentEvent:
    return sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})


STOP = sse({"type": "message_stop"}, "message_stop")


def test_message_delta_usage_overwrites_and_never_adds() -> None:
    translator = AnthropicStreamTranslator()
    feed_one(
        translator, start(input_tokens=10, cache_read_input_tokens=100, cache_creation_input_tokens=50, output_tokens=1)
    )
    feed_one(translator, delta(output_tokens=5))
    feed_one(translator, delta(output_tokens=9, cache_read_input_tokens=None))  # null: keep the value
    feed_one(translator, delta("end_turn", output_tokens=12, input_tokens=10))
    feed_one(translator, STOP)
    usage, finished = translator.finish()
    assert usage == Usage(input_tokens=10, output_tokens=12, cache_read_tokens=100, cache_write_tokens=50)
    assert finished == Finished(reason="stop")


def test_negative_counts_from_a_server_count_as_zero() -> None:
    translator = AnthropicStreamTranslator()
    feed_one(translator, start(input_tokens=-10, cache_read_input_tokens=-3, output_tokens=1))
    feed_one(translator, delta("end_turn", output_tokens=-40))
    feed_one(translator, STOP)
    assert translator.finish()[0] == Usage(input_tokens=0, output_tokens=0, cache_read_tokens=0)


def test_input_tokens_stay_uncached_only() -> None:
    # Anthropic's input buckets are disjoint: input_tokens must not be reduced by the cache.
    translator = AnthropicStreamTranslator()
    feed_one(translator, start(input_tokens=3, cache_read_input_tokens=5000, output_tokens=1))
    feed_one(translator, delta("end_turn", output_tokens=2))
    feed_one(translator, STOP)
    assert translator.finish()[0] == Usage(input_tokens=3, output_tokens=2, cache_read_tokens=5000)


@pytest.mark.parametrize(
    ("raw_reason", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "refusal"),
        ("pause_turn", "pause_turn"),
        ("model_context_window_exceeded", "model_context_window_exceeded"),
        (None, "stop"),
    ],
)
def test_stop_reasons(raw_reason: str | None, reason: str) -> None:
    translator = AnthropicStreamTranslator()
    feed_one(translator, start(input_tokens=1, output_tokens=1))
    feed_one(translator, delta(raw_reason, output_tokens=1))
    feed_one(translator, STOP)
    assert translator.finish()[-1] == Finished(reason=reason)


def test_partial_usage_estimates_output_until_the_final_delta() -> None:
    translator = AnthropicStreamTranslator()
    assert translator.partial_usage() is None
    feed_one(translator, start(input_tokens=7, output_tokens=1))
    assert translator.partial_usage() == Usage(input_tokens=7, output_tokens=1)
    feed_one(translator, text("x" * 21))
    assert translator.partial_usage() == Usage(input_tokens=7, output_tokens=6, estimated=True)
    feed_one(translator, delta("end_turn", output_tokens=4))  # the server's count is final: trust it
    assert translator.partial_usage() == Usage(input_tokens=7, output_tokens=4)


def test_events_after_message_stop_are_ignored() -> None:
    translator = AnthropicStreamTranslator()
    feed_one(translator, start(input_tokens=1, output_tokens=1))
    feed_one(translator, STOP)
    assert list(feed_one(translator, text("late"))) == []
    assert list(feed_one(translator, sse("not json"))) == []


def test_blank_data_is_a_keepalive() -> None:
    assert list(feed_one(AnthropicStreamTranslator(), sse(" "))) == []


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"'])
def test_garbage_is_a_stream_error(data: str) -> None:
    with pytest.raises(ProviderError) as caught:
        feed_one(AnthropicStreamTranslator(), sse(data))
    assert caught.value.kind is K.STREAM


def test_error_event_is_recognised_by_its_sse_name_too() -> None:
    translator = AnthropicStreamTranslator()
    with pytest.raises(ProviderError) as caught:
        feed_one(translator, sse({"error": {"type": "rate_limit_error", "message": "slow down"}}, "error"))
    assert caught.value.kind is K.RATE_LIMITED
    assert "slow down" not in caught.value.message


# --- tool use --------------------------------------------------------------------------------------


def block_start(index: int, block: dict[str, Any]) -> ServerSentEvent:
    return sse({"type": "content_block_start", "index": index, "content_block": block})


def tool_input(index: object, partial_json: object) -> ServerSentEvent:
    return sse(
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": partial_json},
        }
    )


@pytest.mark.parametrize("index", [1, None])
def test_tool_input_outside_a_tool_use_block_is_a_stream_error(index: object) -> None:
    translator = AnthropicStreamTranslator()
    feed_one(translator, block_start(0, {"type": "text", "text": ""}))
    with pytest.raises(ProviderError) as caught:
        feed_one(translator, tool_input(index, "{}"))
    assert caught.value.kind is K.STREAM


def test_tool_input_that_is_not_text_is_a_stream_error() -> None:
    translator = AnthropicStreamTranslator()
    feed_one(translator, block_start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {}}))
    with pytest.raises(ProviderError) as caught:
        feed_one(translator, tool_input(0, {"a": 1}))
    assert caught.value.kind is K.STREAM


@pytest.mark.parametrize(
    ("index", "block"),
    [
        (0, {"type": "tool_use", "id": "t", "input": {}}),
        (0, {"type": "tool_use", "id": "t", "name": 7, "input": {}}),
        (None, {"type": "tool_use", "id": "t", "name": "f", "input": {}}),
    ],
)
def test_a_tool_use_block_without_a_name_or_index_is_a_stream_error(index: Any, block: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        feed_one(
            AnthropicStreamTranslator(), sse({"type": "content_block_start", "index": index, "content_block": block})
        )
    assert caught.value.kind is K.STREAM


def test_a_tool_use_block_without_an_id_gets_a_stable_one() -> None:
    translator = AnthropicStreamTranslator()
    assert feed_one(translator, block_start(2, {"type": "tool_use", "name": "f", "input": {}})) == [
        ToolCallStarted(call_id="call_2", name="f")
    ]
    assert feed_one(translator, sse({"type": "content_block_stop", "index": 2})) == [
        ToolCallReady(call_id="call_2", name="f", arguments="{}")
    ]


def test_input_given_whole_at_the_start_is_the_calls_arguments() -> None:
    # Anthropic starts every tool_use with `input: {}`; a dialect server may give it whole there.
    translator = AnthropicStreamTranslator()
    feed_one(translator, block_start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {"city": "Oslo"}}))
    feed_one(translator, tool_input(0, ""))
    assert feed_one(translator, sse({"type": "content_block_stop", "index": 0})) == [
        ToolCallReady(call_id="t", name="f", arguments='{"city":"Oslo"}')
    ]


def test_tool_input_counts_towards_the_estimate_of_a_broken_stream() -> None:
    translator = AnthropicStreamTranslator()
    feed_one(translator, start(input_tokens=5, output_tokens=1))
    feed_one(translator, block_start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {}}))
    feed_one(translator, tool_input(0, '{"text": "' + "x" * 30 + '"}'))
    with pytest.raises(StreamFailedError) as caught:
        translator.finish()
    assert caught.value.kind is K.TRUNCATED
    assert caught.value.partial_usage == Usage(input_tokens=5, output_tokens=11, estimated=True)


# --- error classification -------------------------------------------------------------------------


def err(etype: str, message: str = "x") -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"}


TOO_LONG = err("invalid_request_error", "prompt is too long: 208656 tokens > 200000 maximum")


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (None, err("overloaded_error", "Overloaded"), K.OVERLOADED),
        (None, err("rate_limit_error"), K.RATE_LIMITED),
        (None, err("api_error", "Internal server error"), K.HTTP),
        (None, TOO_LONG, K.CONTEXT_LENGTH),
        (None, err("invalid_request_error", "messages: roles must alternate"), K.BAD_REQUEST),
        (None, err("authentication_error"), K.AUTH),
        (None, err("permission_error"), K.AUTH),
        (None, err("billing_error"), K.AUTH),
        (None, err("not_found_error", "model: claude-nope"), K.MODEL_NOT_FOUND),
        (None, err("timeout_error"), K.TIMEOUT),
        (None, err("brand_new_error"), K.STREAM),
        (None, {"type": "error"}, K.STREAM),
        (400, TOO_LONG, K.CONTEXT_LENGTH),
        (400, "prompt is too long", K.CONTEXT_LENGTH),
        (400, err("invalid_request_error", "max_tokens: must be positive"), K.BAD_REQUEST),
        (401, err("authentication_error", "invalid x-api-key"), K.AUTH),
        (403, err("permission_error"), K.AUTH),
        (404, err("not_found_error", "model: claude-nope"), K.MODEL_NOT_FOUND),
        (404, "Not Found", K.BAD_REQUEST),
        (402, err("billing_error"), K.AUTH),
        (413, err("request_too_large"), K.BAD_REQUEST),
        (429, err("rate_limit_error"), K.RATE_LIMITED),
        (529, err("overloaded_error"), K.OVERLOADED),
        (503, "upstream connect error", K.OVERLOADED),
        (500, err("api_error"), K.HTTP),
        (502, "<html>bad gateway</html>", K.HTTP),
    ],
)
def test_classify_error(status: int | None, body: object, kind: ProviderErrorKind) -> None:
    default = K.STREAM if status is None else K.HTTP
    assert classify_error(status, body, default=default) is kind


# --- request body ---------------------------------------------------------------------------------


def conversation(turns: int, *, system: str | None = "You are helpful.") -> list[ChatMessage]:
    """A system prompt, `turns` finished user/assistant exchanges, and a new user message."""
    messages = [ChatMessage.text("system", system)] if system is not None else []
    for i in range(turns):
        messages.append(ChatMessage.text("user", f"question {i}"))
        messages.append(ChatMessage.text("assistant", f"answer {i}"))
    messages.append(ChatMessage.text("user", "new question"))
    return messages


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where cache_control sits: "system" or "m<index>", in prompt order."""
    marks = [f"system{i}" for i, b in enumerate(body.get("system", [])) if "cache_control" in b]
    for i, message in enumerate(body["messages"]):
        for block in message["content"]:
            if "cache_control" in block:
                assert block is message["content"][-1], "a breakpoint belongs on the last block"
                marks.append(f"m{i}")
    return marks


def test_request_shape() -> None:
    messages = [
        ChatMessage.text("system", "Be brief."),
        ChatMessage(role="user", parts=(TextPart(text="Hi "), TextPart(text="there"))),
        ChatMessage(role="assistant", parts=(ReasoningPart(text="secret thoughts"), TextPart(text="Hello."))),
        ChatMessage.text("user", "Again"),
    ]
    body = build_request(messages, model="claude-sonnet-4-5", max_tokens=None)
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": True,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "Hello.", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
    }
    assert b"secret" not in orjson.dumps(body)


def test_first_turn_caches_only_the_system_prompt() -> None:
    body = build_request(conversation(0), model="m", max_tokens=100)
    assert breakpoints(body) == ["system0"]
    assert body["max_tokens"] == 100
    assert "system" not in build_request(conversation(0, system=None), model="m", max_tokens=None)


def test_one_hour_ttl_is_sent_on_every_breakpoint() -> None:
    body = build_request(conversation(20), model="m", max_tokens=None, cache_ttl="1h")
    controls = [b["cache_control"] for b in body["system"] if "cache_control" in b]
    controls += [b["cache_control"] for m in body["messages"] for b in m["content"] if "cache_control" in b]
    assert len(controls) == 3
    assert all(c == {"type": "ephemeral", "ttl": "1h"} for c in controls)


def test_the_prefix_breakpoint_is_the_message_before_the_new_one() -> None:
    body = build_request(conversation(3), model="m", max_tokens=None)
    assert breakpoints(body) == ["system0", "m5"]  # m5 = "answer 2"; m6 is the new question
    assert body["messages"][5]["content"][-1]["text"] == "answer 2"


@pytest.mark.parametrize("turns", range(60))
def test_never_more_than_four_breakpoints(turns: int) -> None:
    marks = breakpoints(build_request(conversation(turns), model="m", max_tokens=None))
    assert len(marks) <= 4
    assert f"m{len(conversation(turns)) - 3}" in marks or turns == 0  # the prefix, always


def test_long_sessions_get_an_anchor_that_stays_put() -> None:
    anchors = []
    for turns in range(ANCHOR_EVERY // 2, 40):
        marks = breakpoints(build_request(conversation(turns), model="m", max_tokens=None))
        prefix = f"m{2 * turns - 1}"
        assert marks[0] == "system0"
        assert marks[-1] == prefix
        anchors.append(marks[1] if len(marks) == 3 else None)
    # The anchor moves every ANCHOR_EVERY messages (8 turns) and always onto a message that was
    # an earlier turn's prefix breakpoint, whose cache entry therefore exists already; on the
    # turn it would coincide with the prefix breakpoint it is left out.
    assert anchors == [None, *["m15"] * 7, None, *["m31"] * 7, None, *["m47"] * 7, None, *["m63"] * 7]


def test_empty_parts_are_dropped_and_same_role_messages_merged() -> None:
    messages = [
        ChatMessage.text("system", "   "),
        ChatMessage.text("user", "first"),
        ChatMessage(role="assistant", parts=(ReasoningPart(text="only thoughts"),)),  # a failed turn
        ChatMessage.text("user", "second"),
    ]
    body = build_request(messages, model="m", max_tokens=None)
    assert "system" not in body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}
    ]


def test_empty_conversations_are_refused() -> None:
    with pytest.raises(ProviderError) as caught:
        build_request([ChatMessage.text("system", "only a system prompt")], model="m", max_tokens=None)
    assert caught.value.kind is K.BAD_REQUEST


def test_thinking_budget_comes_on_top_of_the_answer_limit() -> None:
    body = build_request(conversation(1), model="m", max_tokens=1000, thinking_budget=2048)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 3048
    assert "thinking" not in build_request(conversation(1), model="m", max_tokens=1000)


# --- tools in the request ---------------------------------------------------------------------------

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="get_time", description="The time", input_schema={"type": "object", "properties": {}})


def tool_loop(*, follow_up: bool = True) -> list[ChatMessage]:
    """A question, the model's text and two calls, their results, and (optionally) a follow-up."""
    calls = (
        ToolCallPart(call_id="toolu_1", name="get_weather", arguments={"city": "Paris"}),
        ToolCallPart(call_id="toolu_2", name="get_time", arguments={}),
    )
    results = (
        ToolResultPart(call_id="toolu_1", output='{"temp_c": 21}'),
        ToolResultPart(call_id="toolu_2", output="clock offline", is_error=True),
    )
    messages = [
        ChatMessage.text("system", "Be brief."),
        ChatMessage.text("user", "Weather and time in Paris?"),
        ChatMessage(role="assistant", parts=(ReasoningPart(text="SECRET"), TextPart(text="Let me look."), *calls)),
        ChatMessage(role="tool", parts=results),
    ]
    return [*messages, ChatMessage.text("user", "Thanks. And tomorrow?")] if follow_up else messages


def test_tools_are_sent_with_a_breakpoint_on_the_last_one() -> None:
    body = build_request(conversation(0), model="m", max_tokens=None, tools=(WEATHER, CLOCK))
    assert body["tools"] == [
        {"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER.input_schema},
        {
            "name": "get_time",
            "description": "The time",
            "input_schema": CLOCK.input_schema,
            "cache_control": {"type": "ephemeral"},
        },
    ]
    assert "tool_choice" not in body  # auto is the API's default


def test_no_tools_means_no_tools_key() -> None:
    body = build_request(conversation(0), model="m", max_tokens=None, tool_choice="none")
    assert "tools" not in body
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("none", {"type": "none"}), (ForcedTool("get_time"), {"type": "tool", "name": "get_time"})],
)
def test_tool_choice(choice: ToolChoice, expected: dict[str, str]) -> None:
    body = build_request(conversation(0), model="m", max_tokens=None, tools=(WEATHER, CLOCK), tool_choice=choice)
    assert body["tool_choice"] == expected


@pytest.mark.parametrize("turns", range(40))
def test_tools_take_the_fourth_breakpoint_and_no_more(turns: int) -> None:
    body = build_request(conversation(turns), model="m", max_tokens=None, tools=(WEATHER,), cache_ttl="1h")
    tool_marks = [t["cache_control"] for t in body["tools"] if "cache_control" in t]
    assert tool_marks == [{"type": "ephemeral", "ttl": "1h"}]
    assert len(breakpoints(body)) + len(tool_marks) <= 4


def test_a_tool_loop_replayed_with_tools() -> None:
    body = build_request(tool_loop(), model="m", max_tokens=None, tools=(WEATHER, CLOCK))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_time",
                    "input": {},
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp_c": 21}'},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "clock offline", "is_error": True},
                {"type": "text", "text": "Thanks. And tomorrow?"},
            ],
        },
    ]
    assert b"SECRET" not in orjson.dumps(body)


def test_a_tool_message_of_no_results_is_left_out() -> None:
    messages = [*tool_loop(follow_up=False)[:3], ChatMessage(role="tool", parts=()), ChatMessage.text("user", "Well?")]
    body = build_request(messages, model="m", max_tokens=None, tools=(WEATHER, CLOCK))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][-1]["content"] == [{"type": "text", "text": "Well?"}]


def test_without_tools_the_calls_and_results_go_as_text() -> None:
    body = build_request(tool_loop(), model="m", max_tokens=None)
    assert "tools" not in body
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "text", "text": '[called tool get_weather with {"city":"Paris"}]'},
                {"type": "text", "text": "[called tool get_time with {}]", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": '[result of get_weather: {"temp_c": 21}]'},
                {"type": "text", "text": "[error from get_time: clock offline]"},
                {"type": "text", "text": "Thanks. And tomorrow?"},
            ],
        },
    ]
    assert b"tool_use" not in orjson.dumps(body)


@pytest.mark.parametrize(
    ("messages", "choice", "thinks"),
    [
        (conversation(1), "auto", True),
        (conversation(1), ForcedTool("get_weather"), False),  # the API refuses thinking with a forced tool
        (tool_loop(follow_up=False), "auto", False),  # the last assistant message called tools
        (tool_loop(), "auto", False),  # ... and the user added a message to the results
        ([*tool_loop(), ChatMessage.text("assistant", "Sunny."), ChatMessage.text("user", "Ok")], "auto", True),
    ],
)
def test_thinking_is_left_out_where_the_api_would_refuse_it(
    messages: list[ChatMessage], choice: ToolChoice, thinks: bool
) -> None:
    body = build_request(
        messages, model="m", max_tokens=1000, thinking_budget=2048, tools=(WEATHER, CLOCK), tool_choice=choice
    )
    assert ("thinking" in body) is thinks
    assert body["max_tokens"] == (3048 if thinks else 1000)


@pytest.mark.parametrize(
    "message",
    [
        ChatMessage(role="user", parts=(ToolCallPart(call_id="c", name="f"),)),
        ChatMessage(role="assistant", parts=(ToolResultPart(call_id="c", output="x"),)),
        ChatMessage(role="tool", parts=(ToolResultPart(call_id="c", output="x"), TextPart(text="and text"))),
    ],
)
def test_tool_parts_out_of_place_are_refused(message: ChatMessage) -> None:
    with pytest.raises(ProviderError) as caught:
        build_request([message], model="m", max_tokens=None, tools=(WEATHER,))
    assert caught.value.kind is K.BAD_REQUEST


def test_a_forced_tool_that_is_not_offered_is_refused() -> None:
    with pytest.raises(ProviderError) as caught:
        build_request(conversation(0), model="m", max_tokens=None, tools=(WEATHER,), tool_choice=ForcedTool("x"))
    assert caught.value.kind is K.BAD_REQUEST


def test_an_empty_result_says_so() -> None:
    # The API refuses an empty result, at least one marked as an error.
    messages = tool_loop(follow_up=False)[:3]
    messages.append(
        ChatMessage(
            role="tool",
            parts=(
                ToolResultPart(call_id="toolu_1", output=""),
                ToolResultPart(call_id="toolu_2", output="", is_error=True),
            ),
        )
    )
    body = build_request(messages, model="m", max_tokens=None, tools=(WEATHER, CLOCK))
    assert body["messages"][-1]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "(no output)"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "(no output)", "is_error": True},
    ]
