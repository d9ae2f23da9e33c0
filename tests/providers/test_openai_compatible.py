"""OpenAICompatibleProvider against a scripted upstream over a real loopback socket."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from parley.errors import ProviderError, ProviderErrorKind
from parley.local.model_server import free_port
from parley.providers.base import (
    ChatMessage,
    Finished,
    ForcedTool,
    Provider,
    ProviderEvent,
    ReasoningPart,
    TextDelta,
    TextPart,
    ToolCallPart,
    ToolCallReady,
    ToolCallStarted,
    ToolResultPart,
    ToolSpec,
    Usage,
)
from parley.providers.http import AddressNotAllowedError, PolicyResolver, StreamFailedError, UpstreamOptions
from parley.providers.openai_compatible import OpenAICompatibleProvider
from tests.providers import calls
from tests.providers.calls import HELLO, Sleeps, texts
from tests.support.scripted_upstream import (
    Refuse,
    Reply,
    ScriptedUpstream,
    Stall,
    Stream,
    ToolCallShape,
    scripted_call_id,
    sse_replay,
    token_stream,
    tool_call_stream,
)

K = ProviderErrorKind
FIXTURES = Path(__file__).parent.parent / "fixtures" / "openai"
# Bodies of real llama-cpp-python answers (the .http captures hold status line and headers too).
BAD_REQUEST_BODY = (FIXTURES / "llama-cpp-python-bad-request.http").read_bytes().split(b"\n\n", 1)[1]
OVERFLOW_BODY = (FIXTURES / "llama-cpp-python-nonstream-context-overflow.http").read_bytes().split(b"\r\n\r\n", 1)[1]


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def provider(upstream: ScriptedUpstream, sleeps: Sleeps) -> AsyncIterator[OpenAICompatibleProvider]:
    p = OpenAICompatibleProvider(
        base_url=upstream.base_url + "/",
        api_key="sk-test",
        options=UpstreamOptions(idle_timeout=0.5, connect_timeout=1, sleep=sleeps),
    )
    yield p
    await p.aclose()


async def collect(provider: Provider, messages: list[ChatMessage] = HELLO, **kwargs: Any) -> list[ProviderEvent]:
    return await calls.collect(provider, messages, model="m", **kwargs)


async def failing(
    provider: Provider, messages: list[ChatMessage] = HELLO, **kwargs: Any
) -> tuple[list[ProviderEvent], ProviderError]:
    return await calls.failing(provider, messages, model="m", **kwargs)


WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


# --- happy path and request shape ------------------------------------------------------------------


async def test_happy_path_with_usage(provider: OpenAICompatibleProvider, upstream: ScriptedUpstream) -> None:
    upstream.enqueue(token_stream(3, prompt_tokens=12))
    events = await collect(provider)
    assert events == [
        TextDelta(["tok0 "]),
        TextDelta(["tok1 "]),
        TextDelta(["tok2 "]),
        Usage(input_tokens=12, output_tokens=3),
        Finished(reason="stop"),
    ]


async def test_cookies_set_by_the_server_are_never_sent_back(upstream: ScriptedUpstream) -> None:
    raw = (FIXTURES / "vllm-basic.sse").read_bytes()
    upstream.enqueue(Stream(chunks=[raw], headers={"Set-Cookie": "session=tenant-a; Path=/"}))
    # By name: a cookie jar would keep cookies of a named host (it drops those of IP addresses).
    named = upstream.base_url.replace("127.0.0.1", "localhost")
    provider = OpenAICompatibleProvider(
        base_url=named, api_key="sk-test", options=UpstreamOptions(idle_timeout=0.5, connect_timeout=1)
    )
    try:
        await collect(provider)
        await collect(provider)  # another tenant's turn, say
    finally:
        await provider.aclose()
    first, second = upstream.requests
    assert "cookie" not in first.headers
    assert "cookie" not in second.headers


async def test_request_shape(provider: OpenAICompatibleProvider, upstream: ScriptedUpstream) -> None:
    messages = [
        ChatMessage.text("system", "Be brief."),
        ChatMessage(role="user", parts=(TextPart(text="Hi "), TextPart(text="there"))),
        ChatMessage(role="assistant", parts=(ReasoningPart(text="secret"), TextPart(text="Hello."))),
        ChatMessage.text("user", "Again"),
    ]
    await collect(provider, messages, max_tokens=64)
    await collect(provider)
    first, second = upstream.requests
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["accept"] == "text/event-stream"
    assert first.json == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
    }
    assert "max_tokens" not in second.json
    assert "tools" not in second.json
    assert "tool_choice" not in second.json


async def test_a_misplaced_tool_part_is_refused_before_any_request(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    messages = [ChatMessage(role="user", parts=(ToolCallPart(call_id="c", name="f"),))]
    _, error = await failing(provider, messages)
    assert error.kind is K.BAD_REQUEST
    assert upstream.requests == []


async def test_golden_transcript_in_small_tcp_pieces(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    raw = (FIXTURES / "vllm-basic.sse").read_bytes()
    upstream.enqueue(sse_replay(raw, chunk_size=5, delay=0.001))
    events = await collect(provider)
    assert texts(events) == "Grüße aus 東京 🌸!"
    assert events[-2:] == [
        Usage(input_tokens=24, output_tokens=7, cache_read_tokens=96),
        Finished(reason="stop"),
    ]


async def test_estimated_usage_when_the_server_sends_none(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(sse_replay((FIXTURES / "llama-cpp-python-stream-max-tokens.sse").read_bytes()))
    events = await collect(provider, [ChatMessage.text("user", "x" * 41)])
    assert events[-2:] == [Usage(input_tokens=11, output_tokens=6, estimated=True), Finished(reason="length")]


# --- retries before the first event ----------------------------------------------------------------


async def test_429_with_retry_after_then_success(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.enqueue(Reply(429, {"error": "slow down"}, headers={"Retry-After": "0.25"}), token_stream(2))
    events = await collect(provider)
    assert texts(events) == "tok0 tok1 "
    assert sleeps.delays == [0.25]
    assert len(upstream.requests) == 2


async def test_retry_after_as_http_date(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    upstream.enqueue(Reply(503, "busy", headers={"Retry-After": when}), token_stream(1))
    await collect(provider)
    assert len(sleeps.delays) == 1
    assert 3 < sleeps.delays[0] <= 5


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_and_gateway_errors_are_retried_with_backoff(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps, status: int
) -> None:
    upstream.enqueue(Reply(status, "bad gateway"), Reply(status, "bad gateway"), token_stream(1))
    assert texts(await collect(provider)) == "tok0 "
    first, second = sleeps.delays
    assert 0.25 <= first <= 0.5
    assert 0.5 <= second <= 1.0


async def test_retries_give_up_after_max_retries(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.set_default(Reply(429, {"error": {"message": "rate limited"}}, headers={"Retry-After": "0"}))
    _, error = await failing(provider)
    assert (error.kind, error.status) == (K.RATE_LIMITED, 429)
    assert len(upstream.requests) == 4
    assert sleeps.delays == [0, 0, 0]


async def test_retry_after_beyond_the_cap_gives_up_at_once(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.enqueue(Reply(429, "later", headers={"Retry-After": "60"}))
    _, error = await failing(provider)
    assert (error.kind, error.retry_after) == (K.RATE_LIMITED, 60.0)
    assert sleeps.delays == []
    assert len(upstream.requests) == 1


async def test_server_closing_without_an_answer_is_retried(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.enqueue(Refuse(), token_stream(1))
    assert texts(await collect(provider)) == "tok0 "
    assert len(sleeps.delays) == 1


async def test_connection_refused_is_retried_then_unavailable(sleeps: Sleeps) -> None:
    provider = OpenAICompatibleProvider(
        base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", options=UpstreamOptions(max_retries=2, sleep=sleeps)
    )
    try:
        _, error = await failing(provider)
    finally:
        await provider.aclose()
    assert error.kind is K.UNAVAILABLE
    assert error.status is None
    assert len(sleeps.delays) == 2


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(501, {"error": {"message": "no", "type": "not_implemented"}}), K.HTTP),
        (Reply(401, {"error": {"message": "Invalid API Key", "type": "authentication_error"}}), K.AUTH),
        (Reply(404, {"error": {"message": "The model `m` does not exist."}}), K.MODEL_NOT_FOUND),
        (Reply(400, {"error": {"message": "bad", "type": "invalid_request_error"}}), K.BAD_REQUEST),
    ],
)
async def test_other_errors_are_not_retried(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps, reply: Reply, kind: K
) -> None:
    upstream.enqueue(reply)
    _, error = await failing(provider)
    assert (error.kind, error.status) == (kind, reply.status)
    assert sleeps.delays == []
    assert len(upstream.requests) == 1


async def test_no_retry_after_the_first_event(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.enqueue(token_stream(3, delay=0.01, finish_reason=None, usage=False, done=False, end="drop"))
    events, error = await failing(provider)
    assert texts(events) == "tok0 tok1 tok2 "
    assert error.kind is K.STREAM
    assert isinstance(error, StreamFailedError)
    assert error.partial_usage == Usage(input_tokens=2, output_tokens=3, estimated=True)
    assert sleeps.delays == []
    assert len(upstream.requests) == 1


async def test_connection_reset_mid_stream_is_a_stream_error(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.enqueue(token_stream(3, delay=0.01, finish_reason=None, usage=False, done=False, end="reset"))
    _, error = await failing(provider)  # text already sent may be lost with the RST: not asserted
    assert error.kind is K.STREAM
    assert sleeps.delays == []


# --- error bodies --------------------------------------------------------------------------------


async def test_error_body_is_logged_never_shown(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # (a 500 may be transient: it is retried, and fails the same way each time here)
    upstream.set_default(Reply(500, BAD_REQUEST_BODY, headers={"content-type": "application/json"}))
    with caplog.at_level(logging.WARNING, logger="parley.providers"):
        _, error = await failing(provider)
    assert (error.kind, error.status) == (K.HTTP, 500)
    assert "site-packages" not in str(error)
    assert "validation" not in error.message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "site-packages" in logged
    assert "500" in logged


async def test_redirect_is_an_error_and_not_followed(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(Reply(302, None, headers={"Location": upstream.base_url + "/elsewhere"}))
    _, error = await failing(provider)
    assert (error.kind, error.status) == (K.HTTP, 302)
    assert len(upstream.requests) == 1


# --- stream faults -------------------------------------------------------------------------------


async def test_stall_before_the_first_byte_times_out(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    upstream.enqueue(Stall())
    started = time.monotonic()
    _, error = await failing(provider)
    assert error.kind is K.TIMEOUT
    assert 0.4 < time.monotonic() - started < 3
    assert sleeps.delays == []
    assert await upstream.wait_closed_async()


async def test_stall_mid_stream_times_out_with_partial_usage(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(token_stream(2, finish_reason=None, usage=False, done=False, end="stall"))
    events, error = await failing(provider)
    assert texts(events) == "tok0 tok1 "
    assert error.kind is K.TIMEOUT
    assert isinstance(error, StreamFailedError)
    assert error.partial_usage is not None
    assert error.partial_usage.output_tokens == 2


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(token_stream(2000, delay=0.005))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(HELLO, model="m"):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await upstream.wait_closed_async(within=1.0)
    assert not upstream.requests[-1].completed.is_set()


async def test_closing_the_generator_early_closes_the_upstream_connection(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(token_stream(2000, delay=0.005))
    stream = provider.stream(HELLO, model="m")
    assert isinstance((await anext(stream))[0], TextDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await upstream.wait_closed_async(within=1.0)
    assert not upstream.requests[-1].completed.is_set()


@pytest.mark.parametrize(
    ("fixture", "kind", "text"),
    [
        ("garbage", K.STREAM, "ok"),
        ("vllm-stream-error", K.STREAM, "Partial"),
        ("llamacpp-stream-context-error", K.CONTEXT_LENGTH, ""),
        ("eof-no-finish", K.TRUNCATED, "Once upon a time"),
        ("done-without-finish", K.TRUNCATED, "Cut"),
    ],
)
async def test_stream_failures(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, fixture: str, kind: K, text: str
) -> None:
    upstream.enqueue(sse_replay((FIXTURES / f"{fixture}.sse").read_bytes(), chunk_size=64))
    events, error = await failing(provider)
    assert (error.kind, texts(events)) == (kind, text)
    assert len(upstream.requests) == 1


async def test_empty_stream_probes_and_reports_context_length(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(Stream(chunks=[]), Reply(400, OVERFLOW_BODY))
    _, error = await failing(provider)
    assert (error.kind, error.status) == (K.CONTEXT_LENGTH, 400)
    probe = upstream.requests[1].json
    assert probe["stream"] is False
    assert probe["max_tokens"] == 1
    assert "stream_options" not in probe
    assert probe["messages"] == upstream.requests[0].json["messages"]


async def test_probe_survives_the_dead_pooled_connection(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    # uvicorn closes the connection after the failed stream, which aiohttp has already pooled:
    # the probe's first try hits a dead socket (Refuse plays that), the second must go through.
    upstream.enqueue(Stream(chunks=[]), Refuse(), Reply(400, OVERFLOW_BODY))
    _, error = await failing(provider)
    assert (error.kind, error.status) == (K.CONTEXT_LENGTH, 400)
    assert len(upstream.requests) == 3
    assert sleeps.delays == []


async def test_empty_stream_with_a_successful_probe_is_truncated(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(Stream(chunks=[]), token_stream(1))
    _, error = await failing(provider)
    assert error.kind is K.TRUNCATED
    assert len(upstream.requests) == 2


# --- tool calls ----------------------------------------------------------------------------------


async def test_a_tool_loop_goes_out_and_the_calls_come_back(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    raw = (FIXTURES / "llama-cpp-python-tool-forced-default-template.sse").read_bytes()
    upstream.enqueue(sse_replay(raw, chunk_size=7, delay=0.001))
    call_id = "call__0_get_weather_cmpl-cd659d50-fecd-4b31-966c-77e51f98dd98"
    events = await collect(provider, tools=(WEATHER,), tool_choice=ForcedTool("get_weather"))
    assert events == [
        ToolCallStarted(call_id=call_id, name="get_weather"),
        ToolCallReady(call_id=call_id, name="get_weather", arguments='{ "city": "Paris" }'),
        Usage(input_tokens=events[2].input_tokens, output_tokens=9, estimated=True),  # type: ignore[union-attr]
        Finished(reason="tool_calls"),
    ]
    sent = upstream.requests[0].json
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]

    # The next request replays the call and its result, as llama-cpp-python takes them.
    history = [
        *HELLO,
        ChatMessage(
            role="assistant", parts=(ToolCallPart(call_id=call_id, name="get_weather", arguments={"city": "Paris"}),)
        ),
        ChatMessage(role="tool", parts=(ToolResultPart(call_id=call_id, output='{"temp_c": 21}'),)),
    ]
    await collect(provider, history, tools=(WEATHER,))
    replayed = upstream.requests[1].json
    assert replayed["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'},
    ]
    assert replayed["tool_choice"] == "auto"


@pytest.mark.parametrize("shape", ["vllm", "llama-cpp-python", "ollama"])
async def test_scripted_tool_call_streams_of_each_server(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, shape: ToolCallShape
) -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"timezone": "Europe/Paris"}')]
    upstream.enqueue(tool_call_stream(calls, "Checking.", shape=shape, delay=0.001))
    events = await collect(provider, tools=(WEATHER,))
    first, second = (scripted_call_id(shape, i, name) for i, (name, _) in enumerate(calls))
    assert events[:3] == [
        TextDelta(["Checking."]),
        ToolCallStarted(call_id=first, name="get_weather"),
        ToolCallStarted(call_id=second, name="get_time"),
    ]
    assert events[3:5] == [
        ToolCallReady(call_id=first, name="get_weather", arguments='{"city": "Paris"}'),
        ToolCallReady(call_id=second, name="get_time", arguments='{"timezone": "Europe/Paris"}'),
    ]
    assert events[-1] == Finished(reason="tool_calls")


async def test_scripted_forced_call_ending_in_stop_as_vllm_ends_it(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(tool_call_stream([("get_weather", "{}")], finish_reason="stop", completion_tokens=5))
    events = await collect(provider, tools=(WEATHER,), tool_choice=ForcedTool("get_weather"))
    assert events[1:] == [
        ToolCallReady(call_id=scripted_call_id("vllm", 0, "get_weather"), name="get_weather", arguments="{}"),
        Usage(input_tokens=7, output_tokens=5),
        Finished(reason="stop"),
    ]


VLLM_NO_PARSER = {
    "error": {
        "message": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
}


@pytest.mark.parametrize(
    "reply",
    [
        Reply(400, VLLM_NO_PARSER),
        Reply(400, {"error": {"message": "registry.ollama.ai/library/gemma3:4b does not support tools"}}),
        # llama.cpp says it with a 500, which would otherwise be retried.
        Reply(500, {"error": {"code": 500, "message": "tools param requires --jinja flag", "type": "server_error"}}),
    ],
)
async def test_a_server_that_refuses_tools_says_so_and_is_not_retried(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, sleeps: Sleeps, reply: Reply
) -> None:
    upstream.enqueue(reply)
    _, error = await failing(provider, tools=(WEATHER,))
    assert (error.kind, error.status) == (K.TOOLS_UNSUPPORTED, reply.status)
    assert error.error_code() == "tools_unsupported"
    assert "does not support tool calling" in error.message
    assert not error.retryable
    assert (len(upstream.requests), sleeps.delays) == (1, [])


async def test_the_same_refusal_without_tools_in_the_request_is_a_bad_request(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(Reply(400, VLLM_NO_PARSER))
    _, error = await failing(provider, tools=(WEATHER,), tool_choice="none")
    assert error.kind is K.BAD_REQUEST
    assert "tools" not in upstream.requests[0].json


async def test_an_empty_stream_the_probe_does_not_explain_means_tools_cannot_stream(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    # llama-cpp-python with chatml-function-calling answers a streamed `tool_choice: auto` with
    # HTTP 200 and an empty body; the same request unstreamed works.
    upstream.enqueue(Stream(chunks=[]), token_stream(1))
    _, error = await failing(provider, tools=(WEATHER,))
    assert error.kind is K.TOOLS_UNSUPPORTED
    probe = upstream.requests[1].json
    assert (probe["stream"], probe["tools"], probe["tool_choice"]) == (
        False,
        upstream.requests[0].json["tools"],
        "auto",
    )


async def test_an_empty_stream_with_tools_and_an_overflowing_prompt_is_context_length(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(Stream(chunks=[]), Reply(400, OVERFLOW_BODY))
    _, error = await failing(provider, tools=(WEATHER,))
    assert (error.kind, error.status) == (K.CONTEXT_LENGTH, 400)


async def test_an_empty_stream_with_tools_and_an_unreachable_probe_is_truncated(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(Stream(chunks=[]), Refuse(), Refuse())
    _, error = await failing(provider, tools=(WEATHER,))
    assert error.kind is K.TRUNCATED


# --- address policy ------------------------------------------------------------------------------


async def test_literal_metadata_address_is_refused(sleeps: Sleeps) -> None:
    provider = OpenAICompatibleProvider(
        base_url="http://169.254.169.254/v1", api_key="k", options=UpstreamOptions(sleep=sleeps)
    )
    try:
        _, error = await failing(provider)
    finally:
        await provider.aclose()
    assert error.kind is K.UNAVAILABLE
    assert isinstance(error, AddressNotAllowedError)
    assert "not allowed" in error.message
    assert "169.254.169.254" in error.message
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("2130706433", "host '2130706433' is a numeric form of 127.0.0.1; write it as 127.0.0.1"),
        ("127.1", "host '127.1' is a numeric form of 127.0.0.1; write it as 127.0.0.1"),
        ("0x7f.1", "host '0x7f.1' is a numeric form of 127.0.0.1; write it as 127.0.0.1"),
        ("0xa9fea9fe", "169.254.169.254 is a link-local or cloud-metadata address (host '0xa9fea9fe'"),
        # aiohttp maps the fullwidth digits to 127.0.0.1 and connects without asking the resolver.
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "is not ASCII"),
    ],
)
async def test_numeric_host_is_refused_before_connecting_as_at_start_up(
    host: str, message: str, upstream: ScriptedUpstream, sleeps: Sleeps
) -> None:
    # aiohttp refuses some of these spellings as invalid URLs and hands others to the resolver; the
    # provider applies the start-up check first, so each gets the same clear reason.
    provider = OpenAICompatibleProvider(
        base_url=f"http://{host}:{upstream.port}/v1", api_key="k", options=UpstreamOptions(sleep=sleeps)
    )
    try:
        _, error = await failing(provider)
    finally:
        await provider.aclose()
    assert isinstance(error, AddressNotAllowedError)
    assert message in error.message
    assert upstream.requests == []
    assert sleeps.delays == []


class FixedResolver(AbstractResolver):
    """Resolves every name to the given addresses (stands in for DNS)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_name_resolving_to_metadata_is_refused_by_the_resolver(sleeps: Sleeps) -> None:
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(FixedResolver("169.254.169.254")))
    async with aiohttp.ClientSession(connector=connector) as session:
        provider = OpenAICompatibleProvider(
            base_url="http://metadata.example.test/v1",
            api_key="k",
            options=UpstreamOptions(session=session, sleep=sleeps),
        )
        _, error = await failing(provider)
        await provider.aclose()
    assert error.kind is K.UNAVAILABLE
    assert "not allowed" in error.message
    assert sleeps.delays == []  # a policy refusal is final


async def test_resolver_drops_refused_addresses_and_keeps_the_rest(upstream: ScriptedUpstream) -> None:
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(FixedResolver("169.254.169.254", "127.0.0.1")))
    async with aiohttp.ClientSession(connector=connector) as session:
        provider = OpenAICompatibleProvider(
            base_url=f"http://llm.example.test:{upstream.port}/v1",
            api_key="k",
            options=UpstreamOptions(session=session),
        )
        assert texts(await collect(provider)) == "tok0 tok1 tok2 "
        await provider.aclose()
        assert not session.closed  # an injected session belongs to the caller


# --- odds and ends -------------------------------------------------------------------------------


async def test_satisfies_the_provider_protocol(provider: OpenAICompatibleProvider) -> None:
    typed: Provider = provider  # checked by mypy
    assert typed.name == "openai-compatible"


async def test_huge_error_body_is_read_only_up_to_64_kib(
    provider: OpenAICompatibleProvider, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.enqueue(Reply(400, "x" * 300_000))  # (a client error: not retried)
    with caplog.at_level(logging.WARNING, logger="parley.providers"):
        _, error = await failing(provider)
    assert error.status == 400
    (record,) = [r for r in caplog.records if "HTTP 400" in r.getMessage()]
    assert 64 * 1024 <= len(record.getMessage()) < 65 * 1024


def test_scripted_upstream_serves_models_and_non_stream_completions() -> None:
    with ScriptedUpstream(model="tiny") as server:
        with urllib.request.urlopen(server.base_url + "/models", timeout=2) as answer:
            assert orjson.loads(answer.read())["data"][0]["id"] == "tiny"
        request = urllib.request.Request(
            server.base_url + "/chat/completions",
            data=orjson.dumps({"model": "tiny", "messages": [], "stream": False}),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=2) as answer:
            completion = orjson.loads(answer.read())
        assert completion["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "
        assert completion["usage"]["completion_tokens"] == 3
        assert [r.json["stream"] for r in server.requests] == [False]  # /models is not recorded


async def test_numeric_host_is_refused_for_the_servers_window_and_tokenizer(sleeps: Sleeps) -> None:
    # The questions about the model's window and tokenizer go to the host the replies come from:
    # the same address policy holds, so a refused spelling is never connected to.
    connections = 0

    async def count(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # aiohttp maps the fullwidth digits to 127.0.0.1 and connects without asking the resolver.
    provider = OpenAICompatibleProvider(
        base_url=f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/v1",
        api_key="k",
        options=UpstreamOptions(sleep=sleeps),
    )
    try:
        assert await provider.context_window("m") is None
        assert await provider.count_tokens("m", "hello") is None
        assert "not allowed" in (await provider.probe() or "")
    finally:
        await provider.aclose()
        server.close()
        await server.wait_closed()
    assert connections == 0
