"""Golden OpenAI-compatible transcripts, replayed split at every byte offset, give fixed events.

Fixtures in tests/fixtures/openai: `<name>.sse` is a response body, `<name>.json` the expected
events (and the error kind raised at the end, if any). The `llama-cpp-python-*` bodies are
byte-exact captures from a real server (see /work/shared/fixtures/README.md); the others are
written by hand after the wire formats in reference/protocols-security.md §A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import ProviderEvent, ReasoningDelta, TextDelta, Usage
from parley.providers.http import StreamFailedError, translate_read
from parley.providers.openai_wire import _TEMPLATE_TRIES, OpenAIStreamTranslator, classify_error
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
    [("stop", "stop"), ("length", "length"), ("abort", "abort"), ("eos_token", "stop")],
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


def test_function_call_delta_is_a_tool_call() -> None:
    with pytest.raises(ProviderError) as caught:
        feed_one(OpenAIStreamTranslator(), chunk({"function_call": {"name": "f"}}))
    assert caught.value.kind is ProviderErrorKind.TOOLS_UNSUPPORTED


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
