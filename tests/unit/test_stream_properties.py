"""Properties of the upstream stream path on any input: the SSE decoder and both translators.

Whatever bytes a model server sends, split however the network splits them:
- the decoder never raises, and a split never changes what it decodes;
- a translator raises nothing but `ProviderError` (the turn's one failure type);
- a valid stream gives the same events whichever way it is split.
Each example also runs under hypothesis's deadline, so a loop that does not end fails too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.errors import ProviderError
from parley.providers.anthropic_wire import AnthropicStreamTranslator
from parley.providers.base import Finished, ProviderEvent, ReasoningDelta, TextDelta
from parley.providers.http import StreamTranslator, translate_read
from parley.providers.openai_wire import OpenAIStreamTranslator
from parley.providers.sse import ServerSentEvent, SSEDecoder

PROPERTY = settings(
    max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow], database=None
)

# --- splitting ------------------------------------------------------------------------------------

cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=16)


def split(raw: bytes, at: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in at})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


def decode(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.finish()


# --- the decoder ----------------------------------------------------------------------------------

# Bytes that matter to the decoder, mixed with any byte at all.
_sse_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"\n", b"\r", b"\r\n", b"\xef\xbb\xbf", b"\xef", b"data", b"data:", b": ", b"event:", b"id:"]),
        st.sampled_from([b"retry:", b"12", b"\x00", b"\xff", b"\xf0\x9f", b"\x8c\xb8", b":", b" "]),
        st.binary(max_size=8),
    ),
    max_size=40,
).map(b"".join)


@PROPERTY
@given(raw=_sse_bytes, at=cuts)
def test_the_decoder_takes_any_bytes_and_no_split_changes_what_it_decodes(raw: bytes, at: list[int]) -> None:
    assert decode(split(raw, at)) == decode([raw])


@PROPERTY
@given(raw=st.binary(max_size=2000), at=cuts)
def test_the_decoder_takes_random_binary_split_anywhere(raw: bytes, at: list[int]) -> None:
    assert decode(split(raw, at)) == decode([raw])


# --- translators: run as the provider runs them -----------------------------------------------------

Outcome = tuple[list[tuple[str, Any]], str | None]


def normalised(events: list[ProviderEvent]) -> list[tuple[str, Any]]:
    """Events with adjacent deltas of one kind joined (how reads group pieces varies)."""
    out: list[tuple[str, Any]] = []
    for event in events:
        if isinstance(event, TextDelta | ReasoningDelta):
            kind = "text" if isinstance(event, TextDelta) else "reasoning"
            text = "".join(event.texts)
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + text)
            else:
                out.append((kind, text))
        else:
            out.append((event.type, event))
    return [item for item in out if item[1] != ""]


def run(make: Callable[[], StreamTranslator], chunks: list[bytes]) -> Outcome:
    """Decode and translate read by read, as `UpstreamClient` does; a ProviderError ends the stream.
    Any other exception escapes, and fails the test."""
    decoder = SSEDecoder()
    translator = make()
    events: list[ProviderEvent] = []
    try:
        for chunk in [*(c for c in chunks if c), b""]:
            batch, failure = translate_read(decoder, translator, chunk)
            events += batch
            if failure is not None:
                raise failure
            if translator.done:
                break
        events += translator.finish()
    except ProviderError as exc:
        return normalised(events), exc.error_code()
    return normalised(events), None


def openai() -> StreamTranslator:
    return OpenAIStreamTranslator(prompt_chars=40)


TRANSLATORS = {"openai": openai, "anthropic": AnthropicStreamTranslator}

# --- garbage that looks like the real thing ---------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "stop", "length", "tool_calls", "<think>", "</think>", "text_delta", "error"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


# Token counts: boundaries (negative, zero, past 32 bits) as often as ordinary values.
counts = st.one_of(st.sampled_from([-1, 0, 1, 2**31, 2**63 - 1]), st.integers(min_value=-5, max_value=10**6))


def shaped(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of `keys`, each holding its strategy's values (mostly) or any JSON value."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, v, v, json_values) for k, v in keys.items()})


_openai_delta = shaped(
    {
        "content": st.text(max_size=10) | st.lists(json_values, max_size=2),
        "reasoning_content": st.text(max_size=10),
        "reasoning": st.text(max_size=10),
        "role": st.just("assistant"),
        "tool_calls": st.lists(
            shaped(
                {
                    "index": st.integers(0, 2),
                    "id": st.sampled_from(["call_1", "call_2", ""]),
                    "type": st.just("function"),
                    "function": shaped(
                        {
                            "name": st.sampled_from(["calculator", "clock", ""]),
                            "arguments": st.sampled_from(['{"a":', "1}", "{}", "", "[", '{"x": 1}']),
                        }
                    ),
                }
            ),
            max_size=2,
        ),
    }
)
_openai_chunk = shaped(
    {
        "id": st.text(max_size=6),
        "object": st.just("chat.completion.chunk"),
        "choices": st.lists(
            shaped({"index": st.integers(0, 2), "delta": _openai_delta, "finish_reason": st.sampled_from(["stop"])}),
            max_size=2,
        ),
        "usage": shaped(
            {
                "prompt_tokens": counts,
                "completion_tokens": counts,
                "prompt_tokens_details": shaped({"cached_tokens": counts}),
            }
        ),
    }
)
_openai_error = shaped(
    {
        "object": st.just("error"),
        "error": shaped({"message": st.text(max_size=10), "type": st.text(max_size=6), "n_ctx": st.integers(0, 10**6)}),
    }
)

_anthropic_delta = shaped(
    {
        "type": st.sampled_from(["text_delta", "thinking_delta", "input_json_delta", "signature_delta"]),
        "partial_json": st.sampled_from(['{"a":', "1}", "{}", "", "[", '"x"']),
        "text": st.text(max_size=10),
        "thinking": st.text(max_size=10),
        "stop_reason": st.sampled_from(["end_turn", "max_tokens", "refusal"]),
    }
)
_anthropic_usage = shaped({"input_tokens": counts, "output_tokens": counts})
_anthropic_event = shaped(
    {
        "type": st.sampled_from(
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
                "ping",
                "error",
            ]
        ),
        "message": shaped({"id": st.text(max_size=6), "usage": _anthropic_usage}),
        "index": st.integers(0, 3),
        "content_block": shaped(
            {
                "type": st.sampled_from(["text", "thinking", "tool_use"]),
                "text": st.text(),
                "id": st.sampled_from(["toolu_1", "toolu_2", ""]),
                "name": st.sampled_from(["calculator", "clock", ""]),
                "input": st.dictionaries(st.text(max_size=4), json_values, max_size=2),
            }
        ),
        "delta": _anthropic_delta,
        "usage": _anthropic_usage,
        "error": shaped({"type": st.sampled_from(["overloaded_error", "api_error"]), "message": st.text()}),
    }
)


def frame(event: str | None, data: bytes, newline: bytes) -> bytes:
    head = b"event: " + event.encode() + newline if event else b""
    return head + b"data: " + data + newline + newline


def frames(payloads: st.SearchStrategy[Any], events: list[str]) -> st.SearchStrategy[bytes]:
    """A body of SSE frames: JSON payloads mostly, now and then a broken one, a ping or [DONE]."""
    shaped_payload = payloads.map(orjson.dumps)
    data = st.one_of(
        shaped_payload,  # most often: the wire's own shapes, with any value in any field
        shaped_payload,
        shaped_payload,
        json_values.map(orjson.dumps),
        st.sampled_from([b"[DONE]", b"", b"{", b": ping", b"not json", b"[DONE] trailing"]),
    )
    event = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(events))
    one = st.tuples(event, data, st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return st.lists(one, max_size=12).map(lambda parts: b"".join(frame(*p) for p in parts))


def wire_frames(payloads: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Only the wire's shapes, unnamed: the stream goes on long enough to reach the later fields."""
    return st.lists(payloads.map(orjson.dumps), max_size=12).map(
        lambda datas: b"".join(frame(None, d, b"\n") for d in datas)
    )


garbage = {
    "openai": frames(st.one_of(*[_openai_chunk] * 8, _openai_error), ["message", "error"]) | wire_frames(_openai_chunk),
    "anthropic": frames(_anthropic_event, ["message_start", "content_block_delta", "message_stop", "error", "ping"])
    | wire_frames(_anthropic_event),
}


@PROPERTY
@given(raw=garbage["openai"] | _sse_bytes, at=cuts)
def test_the_openai_translator_raises_only_provider_errors_and_no_split_changes_its_answer(
    raw: bytes, at: list[int]
) -> None:
    assert run(openai, split(raw, at)) == run(openai, [raw])


@PROPERTY
@given(raw=garbage["anthropic"] | _sse_bytes, at=cuts)
def test_the_anthropic_translator_raises_only_provider_errors_and_no_split_changes_its_answer(
    raw: bytes, at: list[int]
) -> None:
    assert run(AnthropicStreamTranslator, split(raw, at)) == run(AnthropicStreamTranslator, [raw])


# --- valid streams -----------------------------------------------------------------------------------

_piece = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8) | st.sampled_from(
    ["<think>", "</think>", "<th", "ink>", " ", "\n", "🌸", "Grüße"]
)


def _openai_stream(pieces: list[tuple[str, str]], reason: str, usage: bool, newline: bytes) -> bytes:
    body = b""
    for kind, text in pieces:
        delta = {"content": text} if kind == "text" else {"reasoning_content": text}
        chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        body += frame(None, orjson.dumps(chunk), newline)
    end: dict[str, Any] = {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    if usage:
        end["usage"] = {"prompt_tokens": 12, "completion_tokens": len(pieces)}
    return body + frame(None, orjson.dumps(end), newline) + frame(None, b"[DONE]", newline)


def _anthropic_stream(pieces: list[tuple[str, str]], reason: str, newline: bytes) -> bytes:
    def event(name: str, payload: dict[str, Any]) -> bytes:
        return frame(name, orjson.dumps({"type": name, **payload}), newline)

    body = event("message_start", {"message": {"id": "m1", "usage": {"input_tokens": 9, "output_tokens": 1}}})
    for index, (kind, text) in enumerate(pieces):
        block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": ""}
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta", "thinking": text}
        body += event("content_block_start", {"index": index, "content_block": block})
        body += frame("ping", b'{"type": "ping"}', newline)
        body += event("content_block_delta", {"index": index, "delta": delta})
        body += event("content_block_stop", {"index": index})
    body += event("message_delta", {"delta": {"stop_reason": reason}, "usage": {"output_tokens": len(pieces)}})
    return body + event("message_stop", {})


_pieces = st.lists(st.tuples(st.sampled_from(["text", "reasoning"]), _piece), max_size=10)
_newline = st.sampled_from([b"\n", b"\r\n", b"\r"])


@PROPERTY
@given(
    pieces=_pieces,
    reason=st.sampled_from(["stop", "length"]),
    usage=st.booleans(),
    newline=_newline,
    at=cuts,
)
def test_a_valid_openai_stream_split_anywhere_gives_the_same_events(
    pieces: list[tuple[str, str]], reason: str, usage: bool, newline: bytes, at: list[int]
) -> None:
    raw = _openai_stream(pieces, reason, usage, newline)
    whole = run(openai, [raw])
    assert whole[1] is None, whole
    assert whole[0][-1] == ("finished", Finished(reason=reason))
    assert run(openai, split(raw, at)) == whole


@PROPERTY
@given(pieces=_pieces, reason=st.sampled_from(["end_turn", "max_tokens"]), newline=_newline, at=cuts)
def test_a_valid_anthropic_stream_split_anywhere_gives_the_same_events(
    pieces: list[tuple[str, str]], reason: str, newline: bytes, at: list[int]
) -> None:
    raw = _anthropic_stream(pieces, reason, newline)
    whole = run(AnthropicStreamTranslator, [raw])
    assert whole[1] is None, whole
    texts = [(k, t) for k, t in whole[0] if k in ("text", "reasoning")]
    assert "".join(t for _, t in texts) == "".join(t for _, t in pieces)
    assert run(AnthropicStreamTranslator, split(raw, at)) == whole
