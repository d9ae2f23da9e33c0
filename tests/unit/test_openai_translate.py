"""Golden OpenAI-compatible transcripts, replayed split at every byte offset, give fixed events.

Fixtures in tests/fixtures/openai: `<name>.sse` is a response body, `<name>.json` the expected
events (and the error kind raised at the end, if any). The `llama-cpp-python-*` bodies are
byte-exact captures from a real server (see /work/shared/fixtures/README.md); the others are
written by hand after the wire formats in reference/protocols-security.md §A. The request body
is tested here too: `build_request` is as pure as the translator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    Finished,
    ForcedTool,
    ProviderEvent,
    ReasoningDelta,
    ReasoningPart,
    TextDelta,
    TextPart,
    ToolCallPart,
    ToolCallReady,
    ToolCallStarted,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
    Usage,
)
from parley.providers.http import StreamFailedError, translate_read
from parley.providers.openai_wire import (
    _TEMPLATE_TRIES,
    OpenAIStreamTranslator,
    build_request,
    classify_error,
    prompt_chars,
)
from parley.providers.sse import ServerSentEvent, SSEDecoder
from tests.support.events import feed_one, from_fixture, spelled_out

FIXTURES = Path(__file__).parent.parent / "fixtures" / "openai"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.sse"))


def load(name: str) -> tuple[bytes, int, tuple[list[ProviderEvent], str | None]]:
    """The body, the prompt length, and the expected (events, error code)."""
    spec = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    events = [from_fixture(e) for e in spec["events"]]
    return (FIXTURES / f"{name}.sse").read_bytes(), spec["prompt_chars"], (events, spec["error"])


def run(chunks: list[bytes], prompt_chars: int) -> tuple[list[ProviderEvent], str | None]:
    """Decode and translate read by read as the provider does; returns events and the error raised."""
    decoder = SSEDecoder()
    translator = OpenAIStreamTranslator(prompt_chars=prompt_chars)
    events: list[ProviderEvent] = []
    try:
        for chunk in [*(c for c in chunks if c), b""]:  # b"": the end of the body, as readany says it
            batch, failure = translate_read(decoder, translator, chunk)
            events += spelled_out(batch)
            if failure is not None:
                raise failure
            if translator.done:
                break
        events.extend(translator.finish())
    except ProviderError as exc:
        return events, exc.kind.value
    return events, None


def test_every_fixture_has_expectations() -> None:
    assert len(NAMES) >= 18
    for name in NAMES:
        assert (FIXTURES / f"{name}.json").exists(), name


@pytest.mark.parametrize("name", NAMES)
def test_fixture_whole(name: str) -> None:
    raw, prompt_chars, expected = load(name)
    assert run([raw], prompt_chars) == expected


@pytest.mark.parametrize("name", NAMES)
def test_fixture_split_at_every_byte_offset(name: str) -> None:
    raw, prompt_chars, expected = load(name)
    for i in range(len(raw) + 1):
        assert run([raw[:i], raw[i:]], prompt_chars) == expected, f"split at {i}"


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), cuts=st.lists(st.integers(0, 20_000), min_size=2, max_size=40))
def test_fixture_split_into_many_pieces(name: str, cuts: list[int]) -> None:
    raw, prompt_chars, expected = load(name)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert run(pieces, prompt_chars) == expected


# --- translator details ---------------------------------------------------------------------------


def sse(obj: Any) -> ServerSentEvent:
    return ServerSentEvent(data=obj if isinstance(obj, str) else orjson.dumps(obj).decode())


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> ServerSentEvent:
    return sse({"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra})


def test_errors_after_output_carry_partial_usage() -> None:
    translator = OpenAIStreamTranslator(prompt_chars=9)
    feed_one(translator, chunk({"content": "a"}))
    feed_one(translator, chunk({"content": "b"}))
    with pytest.raises(StreamFailedError) as caught:
        translator.finish()
    assert caught.value.kind is ProviderErrorKind.TRUNCATED
    assert caught.value.partial_usage == Usage(input_tokens=3, output_tokens=2, estimated=True)


def test_partial_usage_prefers_the_servers_latest_counts() -> None:
    translator = OpenAIStreamTranslator(prompt_chars=9)
    usage = {"prompt_tokens": 50, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 20}}
    feed_one(translator, chunk({"content": "a"}, usage=usage))  # vLLM continuous usage: on every chunk
    feed_one(translator, chunk({"content": "b"}, usage={**usage, "completion_tokens": 2}))
    assert translator.partial_usage() == Usage(input_tokens=30, output_tokens=2, cache_read_tokens=20)


def test_negative_counts_from_a_server_count_as_zero() -> None:
    translator = OpenAIStreamTranslator(prompt_chars=9)
    usage = {"prompt_tokens": -500, "completion_tokens": -1, "prompt_tokens_details": {"cached_tokens": -7}}
    feed_one(translator, chunk({"content": "a"}, finish="stop", usage=usage))
    assert translator.finish()[0] == Usage(input_tokens=0, output_tokens=0, cache_read_tokens=0)


def test_no_partial_usage_before_any_chunk() -> None:
    translator = OpenAIStreamTranslator(prompt_chars=9)
    assert translator.partial_usage() is None
    with pytest.raises(StreamFailedError) as caught:
        translator.finish()
    assert caught.value.partial_usage is None


def test_reasoning_field_wins_over_its_deprecated_copy() -> None:
    translator = OpenAIStreamTranslator()
    events = feed_one(translator, chunk({"reasoning": "r", "reasoning_content": "r"}))
    assert list(events) == [ReasoningDelta(["r"])]


def test_reasoning_and_content_in_one_delta_keep_order() -> None:
    events = feed_one(OpenAIStreamTranslator(), chunk({"reasoning_content": "r", "content": "c"}))
    assert list(events) == [ReasoningDelta(["r"]), TextDelta(["c"])]


def test_held_back_partial_tag_is_released_with_the_finish_reason() -> None:
    translator = OpenAIStreamTranslator()
    assert list(feed_one(translator, chunk({"content": "<thi"}))) == []
    assert list(feed_one(translator, chunk({}, "stop"))) == [TextDelta(["<thi"])]


@pytest.mark.parametrize(
    ("raw_reason", "reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("abort", "abort"),
        ("eos_token", "stop"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
    ],
)
def test_finish_reasons(raw_reason: str, reason: str) -> None:
    translator = OpenAIStreamTranslator()
    feed_one(translator, chunk({"content": "x"}, raw_reason))
    assert translator.finish()[-1].reason == reason  # type: ignore[union-attr]


def test_flat_in_stream_error_is_detected() -> None:
    translator = OpenAIStreamTranslator()
    with pytest.raises(ProviderError) as caught:
        feed_one(translator, sse({"object": "error", "message": "boom", "type": "BadRequestError", "code": 400}))
    assert caught.value.kind is ProviderErrorKind.STREAM
    assert "boom" not in caught.value.message


def test_non_object_chunk_and_odd_content_are_stream_errors() -> None:
    with pytest.raises(ProviderError):
        feed_one(OpenAIStreamTranslator(), sse("[1, 2]"))
    with pytest.raises(ProviderError):
        feed_one(OpenAIStreamTranslator(), chunk({"content": {"text": "?"}}))


# --- tool calls ----------------------------------------------------------------------------------


def calls_chunk(*fragments: dict[str, Any], finish: str | None = None) -> ServerSentEvent:
    return chunk({"tool_calls": list(fragments)}, finish)


def fragment(
    index: int | None = None, *, id: str | None = None, name: str | None = None, arguments: object = None
) -> dict[str, Any]:
    function = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    out: dict[str, Any] = {"function": function}
    if index is not None:
        out["index"] = index
    if id is not None:
        out["id"] = id
    return out


def translate_to_end(*events: ServerSentEvent) -> list[ProviderEvent]:
    """Every event, then the end of the stream (the finish events, Usage left out)."""
    translator = OpenAIStreamTranslator()
    out = [e for sse in events for e in feed_one(translator, sse)]
    return out + [e for e in translator.finish() if not isinstance(e, Usage)]


def test_a_lone_legacy_function_call_is_call_0() -> None:
    events = translate_to_end(
        chunk({"function_call": {"name": "lookup", "arguments": '{"q": '}}),
        chunk({"function_call": {"arguments": '"x"}'}}),
        chunk({}, "function_call"),
    )
    assert events == [
        ToolCallStarted(call_id="call_0", name="lookup"),
        ToolCallReady(call_id="call_0", name="lookup", arguments='{"q": "x"}'),
        Finished(reason="tool_calls"),
    ]


def test_the_legacy_copy_beside_tool_calls_is_ignored() -> None:
    legacy = {"name": "other", "arguments": "IGNORED"}
    call = fragment(0, id="c1", name="lookup", arguments="{}")
    events = translate_to_end(chunk({"tool_calls": [call], "function_call": legacy}), chunk({}, "tool_calls"))
    assert events[:2] == [
        ToolCallStarted(call_id="c1", name="lookup"),
        ToolCallReady(call_id="c1", name="lookup", arguments="{}"),
    ]


def test_fragments_without_an_index_take_their_place_in_the_list() -> None:
    first, second = fragment(id="a", name="f", arguments='{"n": 1}'), fragment(id="b", name="g", arguments="{}")
    events = translate_to_end(calls_chunk(first, second), chunk({}, "tool_calls"))
    assert [e for e in events if isinstance(e, ToolCallReady)] == [
        ToolCallReady(call_id="a", name="f", arguments='{"n": 1}'),
        ToolCallReady(call_id="b", name="g", arguments="{}"),
    ]


def test_arguments_sent_as_an_object_are_serialized() -> None:
    events = translate_to_end(
        calls_chunk(fragment(0, id="a", name="f", arguments={"city": "Oslo", "days": 2})), chunk({}, "stop")
    )
    assert ToolCallReady(call_id="a", name="f", arguments='{"city":"Oslo","days":2}') in events


def test_a_new_id_at_a_known_index_is_a_new_call_even_in_one_chunk() -> None:
    # Ollama numbers every whole call 0.
    one = fragment(0, id="call_a", name="f", arguments='{"n":1}')
    two = fragment(0, id="call_b", name="f", arguments='{"n":2}')
    events = translate_to_end(calls_chunk(one, two), chunk({}, "tool_calls"))
    assert [e for e in events if isinstance(e, ToolCallReady)] == [
        ToolCallReady(call_id="call_a", name="f", arguments='{"n":1}'),
        ToolCallReady(call_id="call_b", name="f", arguments='{"n":2}'),
    ]


def test_calls_without_ids_get_stable_ones_and_come_in_index_order() -> None:
    events = translate_to_end(
        calls_chunk(fragment(1, name="second", arguments="{")),
        calls_chunk(fragment(0, name="first")),
        calls_chunk(fragment(1, arguments="}")),
        chunk({}, "tool_calls"),
    )
    assert events == [
        ToolCallStarted(call_id="call_0", name="second"),
        ToolCallStarted(call_id="call_1", name="first"),
        ToolCallReady(call_id="call_1", name="first", arguments="{}"),
        ToolCallReady(call_id="call_0", name="second", arguments="{}"),
        Finished(reason="tool_calls"),
    ]


def test_a_repeated_name_is_a_copy_not_more_of_the_name() -> None:
    # llama-cpp-python repeats the id and name on every fragment.
    events = translate_to_end(
        calls_chunk(fragment(0, id="c", name="get_weather", arguments="{}")),
        calls_chunk(fragment(0, id="c", name="get_weather", arguments="")),
        chunk({}, "tool_calls"),
    )
    assert events[0] == ToolCallStarted(call_id="c", name="get_weather")
    assert events[1] == ToolCallReady(call_id="c", name="get_weather", arguments="{}")


def test_text_before_a_call_in_the_same_chunk_comes_first() -> None:
    both = chunk({"content": "Let me look.", "tool_calls": [fragment(0, id="c", name="f")]})
    assert feed_one(OpenAIStreamTranslator(), both) == [
        TextDelta(["Let me look."]),
        ToolCallStarted(call_id="c", name="f"),
    ]


def test_a_call_that_never_got_a_name_is_a_stream_error() -> None:
    translator = OpenAIStreamTranslator()
    feed_one(translator, calls_chunk(fragment(0, id="c", arguments="{}")))
    feed_one(translator, chunk({}, "tool_calls"))
    with pytest.raises(StreamFailedError) as caught:
        translator.finish()
    assert caught.value.kind is ProviderErrorKind.STREAM


def test_a_stream_cut_during_a_call_is_truncated_without_the_call() -> None:
    translator = OpenAIStreamTranslator()
    assert feed_one(translator, calls_chunk(fragment(0, id="c", name="f", arguments='{"a'))) == [
        ToolCallStarted(call_id="c", name="f")
    ]
    with pytest.raises(StreamFailedError) as caught:
        translator.finish()
    assert caught.value.kind is ProviderErrorKind.TRUNCATED
    assert caught.value.partial_usage == Usage(input_tokens=0, output_tokens=1, estimated=True)


@pytest.mark.parametrize(
    "delta",
    [
        {"tool_calls": {"index": 0}},
        {"tool_calls": ["call"]},
        {"tool_calls": [{"index": 0, "function": "f"}]},
        {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": 12}}]},
        {"function_call": "f"},
    ],
)
def test_tool_calls_of_an_unknown_shape_are_stream_errors(delta: dict[str, Any]) -> None:
    with pytest.raises(ProviderError) as caught:
        feed_one(OpenAIStreamTranslator(), chunk(delta))
    assert caught.value.kind is ProviderErrorKind.STREAM


# --- error classification -------------------------------------------------------------------------

K = ProviderErrorKind
LLAMA_CPP_PYTHON_OVERFLOW = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens. However, you requested 3031 tokens "
        "(3031 in the messages, None in the completion). Please reduce the length of the messages or "
        "completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, LLAMA_CPP_PYTHON_OVERFLOW, K.CONTEXT_LENGTH),
        (400, {"error": {"message": "x", "code": "context_length_exceeded"}}, K.CONTEXT_LENGTH),
        (
            400,
            {"error": {"message": "request exceeds", "type": "exceed_context_size_error", "n_ctx": 4096}},
            K.CONTEXT_LENGTH,
        ),
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 2048 tokens. However, your request has "
                "2100 input tokens.",
                "type": "BadRequestError",
                "code": 400,
            },
            K.CONTEXT_LENGTH,
        ),
        (400, "prompt is too long: 210000 tokens > 200000 maximum", K.CONTEXT_LENGTH),
        (401, {"error": {"message": "Invalid API Key", "type": "authentication_error", "code": 401}}, K.AUTH),
        (403, "forbidden", K.AUTH),
        (404, {"error": {"message": "The model `x` does not exist."}}, K.MODEL_NOT_FOUND),
        (404, {"error": "model 'llama9' not found"}, K.MODEL_NOT_FOUND),
        (404, "404 page not found", K.BAD_REQUEST),
        (429, {"error": "too many requests"}, K.RATE_LIMITED),
        (503, {"error": {"message": "Loading model", "type": "unavailable_error"}}, K.OVERLOADED),
        (529, None, K.OVERLOADED),
        (422, {"detail": []}, K.BAD_REQUEST),
        (500, {"error": {"message": "internal", "type": "internal_server_error"}}, K.HTTP),
        (502, "<html>bad gateway</html>", K.HTTP),
    ],
)
def test_classify_error(status: int, body: object, kind: ProviderErrorKind) -> None:
    assert classify_error(status, body, default=K.HTTP) is kind


def test_classify_in_stream_defaults_to_the_given_kind() -> None:
    assert classify_error(None, {"error": {"message": "Internal server error"}}, default=K.STREAM) is K.STREAM
    assert classify_error(None, {"error": "x"}, default=K.STREAM) is K.STREAM


VLLM_NO_PARSER = {
    "error": {
        "message": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
}
LLAMA_CPP_NO_JINJA = {"error": {"code": 500, "message": "tools param requires --jinja flag", "type": "server_error"}}
OLLAMA_NO_TOOLS = {
    "error": {
        "message": "registry.ollama.ai/library/gemma3:4b does not support tools",
        "type": "api_error",
        "param": None,
        "code": None,
    }
}


@pytest.mark.parametrize(
    ("status", "body", "without_tools"),
    [
        (400, VLLM_NO_PARSER, K.BAD_REQUEST),
        (
            400,
            {"object": "error", "message": 'tool_choice="required" requires --tool-call-parser to be set'},
            K.BAD_REQUEST,
        ),
        (500, LLAMA_CPP_NO_JINJA, K.HTTP),
        (400, {"error": {"message": "Unsupported param: tool_choice", "type": "invalid_request_error"}}, K.BAD_REQUEST),
        (400, OLLAMA_NO_TOOLS, K.BAD_REQUEST),
        (400, {"error": "llama3 does not support tools"}, K.BAD_REQUEST),
        (404, {"error": {"message": "No endpoints found that support tool use.", "code": 404}}, K.BAD_REQUEST),
    ],
)
def test_a_refusal_of_tools_is_tools_unsupported_when_the_request_had_tools(
    status: int, body: object, without_tools: ProviderErrorKind
) -> None:
    assert classify_error(status, body, default=K.HTTP, tools=True) is K.TOOLS_UNSUPPORTED
    assert classify_error(status, body, default=K.HTTP) is without_tools


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": {"message": "tools.0.function.name: string does not match pattern"}}, K.BAD_REQUEST),
        (400, LLAMA_CPP_PYTHON_OVERFLOW, K.CONTEXT_LENGTH),
        (None, {"error": {"message": "model does not support tools"}}, K.STREAM),
    ],
)
def test_other_errors_of_a_request_with_tools_keep_their_kind(status: int | None, body: object, kind: K) -> None:
    default = K.STREAM if status is None else K.HTTP
    assert classify_error(status, body, default=default, tools=True) is kind


# --- request body ---------------------------------------------------------------------------------

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="get_time", description="The time", input_schema={"type": "object", "properties": {}})
WEATHER_WIRE = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER.input_schema},
}


def tool_loop(*, with_text: bool = True) -> list[ChatMessage]:
    """A question, the model's two calls (with some text before them), their results, and a follow-up."""
    calls = (
        ToolCallPart(call_id="c1", name="get_weather", arguments={"city": "Paris"}),
        ToolCallPart(call_id="c2", name="get_time", arguments={}),
    )
    before = (ReasoningPart(text="SECRET"), TextPart(text="Let me look.")) if with_text else ()
    return [
        ChatMessage.text("system", "Be brief."),
        ChatMessage.text("user", "Weather and time in Paris?"),
        ChatMessage(role="assistant", parts=(*before, *calls)),
        ChatMessage(
            role="tool",
            parts=(
                ToolResultPart(call_id="c1", output='{"temp_c": 21}'),
                ToolResultPart(call_id="c2", output="clock offline", is_error=True),
            ),
        ),
        ChatMessage.text("user", "Thanks. And tomorrow?"),
    ]


def test_no_tools_means_no_tools_key_and_no_tool_choice() -> None:
    body = build_request([ChatMessage.text("user", "hi")], "m", None)
    assert "tools" not in body
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        (ForcedTool("get_time"), {"type": "function", "function": {"name": "get_time"}}),
    ],
)
def test_tools_and_tool_choice(choice: ToolChoice, expected: object) -> None:
    body = build_request([ChatMessage.text("user", "hi")], "m", 64, (WEATHER, CLOCK), choice)
    assert body["tools"][0] == WEATHER_WIRE
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather", "get_time"]
    assert body["tool_choice"] == expected


def test_schemas_go_without_repetition_bounds_that_would_become_huge_grammars() -> None:
    """llama.cpp writes `maxLength: 2000` out as 2000 nested grammar rules, and its server dies on
    parsing them; parley checks the bounds itself once the call is complete."""
    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": 2000},
            "tags": {"type": "array", "maxItems": 50, "items": {"type": "string", "maxLength": 30}},
            "maxLength": {"type": "integer", "maximum": 10},  # a field that happens to bear the name
        },
        "required": ["text"],
    }
    tool = ToolSpec(name="add_note", description="Save a note.", input_schema=schema)
    sent = build_request([ChatMessage.text("user", "hi")], "m", None, (tool,))["tools"][0]["function"]["parameters"]
    assert sent == {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "maxLength": {"type": "integer", "maximum": 10},
        },
        "required": ["text"],
    }
    assert schema["properties"]["text"]["maxLength"] == 2000  # the tool's own schema is left whole


def test_tool_choice_none_sends_no_tools_but_keeps_the_calls_in_the_history() -> None:
    body = build_request(tool_loop(), "m", None, (WEATHER, CLOCK), "none")
    assert "tools" not in body
    assert "tool_choice" not in body
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool", "user"]


def test_a_tool_loop_replayed_with_tools() -> None:
    body = build_request(tool_loop(), "m", None, (WEATHER, CLOCK))
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: clock offline"},
        {"role": "user", "content": "Thanks. And tomorrow?"},
    ]
    assert b"SECRET" not in orjson.dumps(body)


def test_an_assistant_message_of_calls_only_has_empty_content_never_null() -> None:
    body = build_request(tool_loop(with_text=False), "m", None, (WEATHER, CLOCK))
    assert body["messages"][2]["content"] == ""
    assert b'"content":null' not in orjson.dumps(body)


def test_without_tools_the_calls_and_results_go_as_text() -> None:
    body = build_request(tool_loop(), "m", None)
    assert "tools" not in body
    assert body["messages"][2:] == [
        {
            "role": "assistant",
            "content": 'Let me look.\n[called tool get_weather with {"city":"Paris"}]\n[called tool get_time with {}]',
        },
        {
            "role": "user",
            "content": '[result of get_weather: {"temp_c": 21}]\n[error from get_time: clock offline]'
            "\n\nThanks. And tomorrow?",
        },
    ]


def test_without_tools_results_before_an_assistant_message_stay_a_message_of_their_own() -> None:
    messages = [*tool_loop(with_text=False)[:4], ChatMessage.text("assistant", "21 degrees; no clock.")]
    body = build_request(messages, "m", None)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert (
        body["messages"][2]["content"]
        == '[called tool get_weather with {"city":"Paris"}]\n[called tool get_time with {}]'
    )


@pytest.mark.parametrize(
    ("result", "with_tools", "without_tools"),
    [
        (ToolResultPart(call_id="c1", output=""), "(no output)", "[result of get_weather: (no output)]"),
        (
            ToolResultPart(call_id="c1", output=" ", is_error=True),
            "Error: (no output)",
            "[error from get_weather: (no output)]",
        ),
    ],
)
def test_an_empty_result_says_so(result: ToolResultPart, with_tools: str, without_tools: str) -> None:
    messages = [
        *tool_loop()[:2],
        ChatMessage(role="assistant", parts=(ToolCallPart(call_id="c1", name="get_weather"),)),
    ]
    messages.append(ChatMessage(role="tool", parts=(result,)))
    assert build_request(messages, "m", None, (WEATHER,))["messages"][-1]["content"] == with_tools
    assert build_request(messages, "m", None)["messages"][-1]["content"] == without_tools


def test_a_result_of_an_unknown_call_is_named_by_its_id() -> None:
    messages = [ChatMessage(role="tool", parts=(ToolResultPart(call_id="c9", output="ok"),))]
    assert build_request(messages, "m", None)["messages"] == [{"role": "user", "content": "[result of c9: ok]"}]


@pytest.mark.parametrize(
    "message",
    [
        ChatMessage(role="user", parts=(ToolCallPart(call_id="c", name="f"),)),
        ChatMessage(role="assistant", parts=(ToolResultPart(call_id="c", output="x"),)),
        ChatMessage(role="tool", parts=(ToolResultPart(call_id="c", output="x"), TextPart(text="and text"))),
        ChatMessage(role="system", parts=(ToolCallPart(call_id="c", name="f"),)),
    ],
)
def test_tool_parts_out_of_place_are_refused(message: ChatMessage) -> None:
    with pytest.raises(ProviderError) as caught:
        build_request([message], "m", None, (WEATHER,))
    assert caught.value.kind is K.BAD_REQUEST


@pytest.mark.parametrize("tools", [(), (WEATHER,)])
def test_a_forced_tool_that_is_not_offered_is_refused(tools: tuple[ToolSpec, ...]) -> None:
    with pytest.raises(ProviderError) as caught:
        build_request([ChatMessage.text("user", "hi")], "m", None, tools, ForcedTool("get_time"))
    assert caught.value.kind is K.BAD_REQUEST
    assert "get_time" in caught.value.message


def test_prompt_chars_count_calls_and_tool_definitions() -> None:
    plain = build_request([ChatMessage.text("user", "hello")], "m", None)
    assert prompt_chars(plain) == 5
    body = build_request(tool_loop(), "m", None, (WEATHER,))
    text = sum(len(m["content"]) for m in body["messages"])
    arguments = len('{"city":"Paris"}') + len("{}")
    assert prompt_chars(body) == text + arguments + len(orjson.dumps(body["tools"]))


# --- the per-token fast path ----------------------------------------------------------------------


def translate_whole(payloads: list[bytes]) -> tuple[list[ProviderEvent], str | None, OpenAIStreamTranslator]:
    """Every payload parsed whole (the envelope never learned): what the envelope shortcut must match."""
    translator = OpenAIStreamTranslator(prompt_chars=10)
    translator._templates_tried = _TEMPLATE_TRIES
    return _translate(translator, payloads)


def translate_fast(payloads: list[bytes]) -> tuple[list[ProviderEvent], str | None, OpenAIStreamTranslator]:
    """The payloads as one read, as the provider translates them."""
    return _translate(OpenAIStreamTranslator(prompt_chars=10), payloads)


def _translate(
    translator: OpenAIStreamTranslator, payloads: list[bytes]
) -> tuple[list[ProviderEvent], str | None, OpenAIStreamTranslator]:
    events: list[ProviderEvent] = []
    try:
        translator.feed([ServerSentEvent(data=p.decode("utf-8", "replace")) for p in payloads], events)
    except ProviderError as exc:
        return spelled_out(events), exc.kind.value, translator
    return spelled_out(events), None, translator


def _token(content: object, **choice: Any) -> bytes:
    choices = [{"index": 0, "delta": {"content": content}, **choice}]
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices})


def _around(literal: bytes) -> bytes:
    """`_token`'s envelope around any bytes where the content string goes."""
    prefix, suffix = _token("").split(b'""', 1)
    return prefix + literal + suffix


_PAYLOADS = [
    _token("Hel"),
    _token("Hel"),
    _around(b'"a \\"quoted\\" \\\\"'),
    _around(b' "spaced" '),
    _around(b'"a","role":"assistant"'),  # same envelope, but two keys
    _around(b'"a"},"x":{"y":"b"'),
    _around(b"12"),
    _around(b"null"),
    _around(b'"\\ud800"'),
    _around(b'"bad \xfe"'),
    _around(b'"unterminated'),
    _token(""),
    _token(None),
    _token("lo", finish_reason="stop"),
    _token("x", logprobs=None, finish_reason=None),
    b'{"choices":[{"delta":{"content":"caf\\u00e9"}}]}',
    b'{"choices":[{"delta":{"content":"bad \xff byte"}}]}',  # not UTF-8: read as text with U+FFFD
    b'{"choices":[{"delta":{"role":"assistant","content":"both"}}]}',
    b'{"choices":[{"delta":{"reasoning_content":"hmm"}}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b'{"choices":[{"delta":{"content":"u"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    b'{"choices":[{"delta":{"content":"<think>a"}}]}',
    b'{"object":"error","message":"boom"}',
    b'{"error":{"message":"boom"}}',
    b'{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}',
    b'{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{"}}]}}]}',
    b'{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}}]}',
    b'{"choices":[{"delta":{"function_call":{"name":"g","arguments":"{}"}}}]}',
    b'{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":7}}]}}]}',
    b'{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}',
    b'{"choices":[1]}',
    b'{"choices":{"0":{}}}',
    b'{"choices":[{"delta":"text"}]}',
    b"[1, 2]",
    b"not json",
    b"",
    b": ping",
    b"[DONE]",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PAYLOADS), max_size=10))
def test_property_the_envelope_shortcut_translates_as_parsing_whole_does(payloads: list[bytes]) -> None:
    events, error, each = translate_whole(payloads)
    fast_events, fast_error, fast = translate_fast(payloads)
    assert (fast_events, fast_error) == (events, error)
    assert (fast.done, fast.saw_chunk, fast.finish_reason) == (each.done, each.saw_chunk, each.finish_reason)
    assert fast.partial_usage() == each.partial_usage()
    assert ending(fast) == ending(each)


def ending(translator: OpenAIStreamTranslator) -> tuple[list[ProviderEvent], str | None]:
    """What the end of the stream gives: the last events, or the error's kind."""
    try:
        return translator.finish(), None
    except ProviderError as exc:
        return [], exc.kind.value


@pytest.mark.parametrize("payload", [b'{"choices":[1]}', b'{"choices":{"0":{}}}', b'{"choices":[{"delta":"text"}]}'])
def test_chunks_of_an_unknown_shape_are_stream_errors(payload: bytes) -> None:
    events, error, _ = translate_fast([_token("kept"), payload, _token("never")])
    assert events == [TextDelta(["kept"])]
    assert error == ProviderErrorKind.STREAM.value


def test_the_envelope_of_a_token_chunk_is_learned_and_only_the_string_is_read_after() -> None:
    translator = OpenAIStreamTranslator()
    events: list[ProviderEvent] = []
    translator.feed([ServerSentEvent(data=p.decode()) for p in (_token("one"), _token("two"))], events)
    assert translator._template is not None  # learned (the first decided on <think>)
    tricky = [_token(' "3"\n'), _around(b' "four" '), _around(b'"a","role":"x"'), _token("five")]
    translator.feed([ServerSentEvent(data=p.decode()) for p in tricky], events)
    assert len(events) == 1  # a read's answer pieces travel as one run, however each was parsed
    events = spelled_out(events)
    assert (events, None) == translate_whole([_token("one"), _token("two"), *tricky])[:2]
    assert [e.texts for e in events[:4]] == [["one"], ["two"], [' "3"\n'], ["four"]]  # type: ignore[union-attr]


def test_an_envelope_that_changes_every_token_is_read_whole() -> None:
    payloads = [
        orjson.dumps({"created": i, "choices": [{"delta": {"content": f"t{i}"}, "finish_reason": None}]})
        for i in range(20)
    ]
    events, error, translator = translate_fast(payloads)
    assert (events, error) == ([TextDelta([f"t{i}"]) for i in range(20)], None)
    assert translator._templates_tried == 4  # it stopped trying
