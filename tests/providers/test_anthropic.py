"""AnthropicProvider against a scripted Anthropic-dialect server over a real loopback socket."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from parley.errors import ProviderError, ProviderErrorKind
from parley.local.model_server import free_port
from parley.providers.anthropic import AnthropicProvider
from parley.providers.base import (
    ChatMessage,
    Finished,
    Provider,
    ProviderEvent,
    ReasoningDelta,
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
from parley.providers.http import AddressNotAllowedError, StreamFailedError, UpstreamOptions
from tests.providers import calls
from tests.providers.calls import HELLO, Sleeps, texts
from tests.support.scripted_anthropic import (
    ScriptedAnthropic,
    error_body,
    message_stream,
    scripted_tool_use_id,
    tool_use_stream,
)
from tests.support.scripted_upstream import Refuse, Reply, Stall, Stream, sse_replay

K = ProviderErrorKind
FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"


@pytest.fixture
def server() -> Iterator[ScriptedAnthropic]:
    s = ScriptedAnthropic()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def provider(server: ScriptedAnthropic, sleeps: Sleeps) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider(
        api_key="sk-ant-test",
        base_url=server.base_url + "/",
        options=UpstreamOptions(idle_timeout=0.4, connect_timeout=1, sleep=sleeps),
    )
    yield p
    await p.aclose()


async def collect(provider: Provider, messages: list[ChatMessage] = HELLO, **kwargs: Any) -> list[ProviderEvent]:
    return await calls.collect(provider, messages, model="claude-sonnet-4-5", **kwargs)


async def failing(provider: Provider, messages: list[ChatMessage] = HELLO) -> tuple[list[ProviderEvent], ProviderError]:
    return await calls.failing(provider, messages, model="claude-sonnet-4-5")


def cache_marks(body: dict[str, Any]) -> list[str]:
    marks = [f"system{i}" for i, b in enumerate(body.get("system", [])) if "cache_control" in b]
    marks += [f"m{i}" for i, m in enumerate(body["messages"]) for b in m["content"] if "cache_control" in b]
    return marks


# --- happy path and request shape ------------------------------------------------------------------


async def test_happy_path(provider: AnthropicProvider, server: ScriptedAnthropic) -> None:
    server.enqueue(message_stream(["Hel", "lo"], thinking=["hmm"], input_tokens=30, cache_read=200, cache_write=50))
    assert await collect(provider) == [
        ReasoningDelta(["hmm"]),
        TextDelta(["Hel"]),
        TextDelta(["lo"]),
        Usage(input_tokens=30, output_tokens=3, cache_read_tokens=200, cache_write_tokens=50),
        Finished(reason="stop"),
    ]


async def test_headers_and_body(provider: AnthropicProvider, server: ScriptedAnthropic) -> None:
    messages = [
        ChatMessage.text("system", "You are parley."),
        ChatMessage.text("user", "What is 2+2?"),
        ChatMessage(role="assistant", parts=(ReasoningPart(text="SECRET-REASONING"), TextPart(text="4."))),
        ChatMessage.text("user", "And 3+3?"),
    ]
    await collect(provider, messages, max_tokens=256)
    (request,) = server.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert "anthropic-beta" not in request.headers
    body = request.json
    assert (body["model"], body["max_tokens"], body["stream"]) == ("claude-sonnet-4-5", 256, True)
    assert body["system"] == [{"type": "text", "text": "You are parley.", "cache_control": {"type": "ephemeral"}}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert cache_marks(body) == ["system0", "m1"]  # system prompt + the history before the new message
    assert "cache_control" not in body["messages"][-1]["content"][-1]
    assert b"SECRET-REASONING" not in request.body
    assert "thinking" not in body


async def test_long_session_breakpoints_in_the_captured_body(server: ScriptedAnthropic) -> None:
    messages = [ChatMessage.text("system", "sys")]
    for i in range(12):
        messages += [ChatMessage.text("user", f"q{i}"), ChatMessage.text("assistant", f"a{i}")]
    messages.append(ChatMessage.text("user", "next"))
    provider = AnthropicProvider(api_key="k", base_url=server.base_url, cache_ttl="1h", thinking_budget=2000)
    try:
        await collect(provider, messages)
    finally:
        await provider.aclose()
    request = server.requests[-1]
    marks = cache_marks(request.json)
    assert marks == ["system0", "m15", "m23"]  # system, anchor, prefix: within the API's 4
    assert request.json["messages"][23]["content"][-1] == {
        "type": "text",
        "text": "a11",
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    assert request.headers["anthropic-beta"] == "extended-cache-ttl-2025-04-11"
    assert request.json["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert request.json["max_tokens"] == 4096 + 2000


async def test_base_url_ending_in_v1_is_not_doubled(server: ScriptedAnthropic) -> None:
    provider = AnthropicProvider(api_key="k", base_url=server.base_url + "/v1/")
    try:
        assert texts(await collect(provider)) == "Hello world"
    finally:
        await provider.aclose()
    assert server.requests[-1].path == "/v1/messages"


async def test_a_misplaced_tool_part_is_refused_before_any_request(
    provider: AnthropicProvider, server: ScriptedAnthropic
) -> None:
    messages = [ChatMessage(role="user", parts=(ToolCallPart(call_id="c", name="f"),))]
    _, error = await failing(provider, messages)
    assert error.kind is K.BAD_REQUEST
    assert server.requests == []


DEVICES = ToolSpec(
    name="lookup_device",
    description="A device by host name",
    input_schema={"type": "object", "properties": {"hostname": {"type": "string"}}, "required": ["hostname"]},
)


async def test_a_tool_loop_goes_out_and_the_calls_come_back(
    provider: AnthropicProvider, server: ScriptedAnthropic
) -> None:
    server.enqueue(sse_replay((FIXTURES / "tool-use-parallel.sse").read_bytes(), chunk_size=9, delay=0.001))
    events = await collect(provider, tools=(DEVICES,))
    assert [e for e in events if isinstance(e, ToolCallReady)] == [
        ToolCallReady(call_id="toolu_parley_0101", name="lookup_device", arguments='{"hostname": "web-1"}'),
        ToolCallReady(call_id="toolu_parley_0102", name="lookup_device", arguments='{"hostname": "web-2"}'),
    ]
    assert events[-1] == Finished(reason="tool_calls")
    assert server.requests[0].json["tools"][0]["name"] == "lookup_device"

    history = [
        *HELLO,
        ChatMessage(
            role="assistant",
            parts=(
                ToolCallPart(call_id="toolu_parley_0101", name="lookup_device", arguments={"hostname": "web-1"}),
                ToolCallPart(call_id="toolu_parley_0102", name="lookup_device", arguments={"hostname": "web-2"}),
            ),
        ),
        ChatMessage(
            role="tool",
            parts=(
                ToolResultPart(call_id="toolu_parley_0101", output="up"),
                ToolResultPart(call_id="toolu_parley_0102", output="no such host", is_error=True),
            ),
        ),
    ]
    await collect(provider, history, tools=(DEVICES,))
    body = server.requests[1].json
    assert [block["type"] for block in body["messages"][1]["content"]] == ["tool_use", "tool_use"]
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_parley_0101", "content": "up"},
            {"type": "tool_result", "tool_use_id": "toolu_parley_0102", "content": "no such host", "is_error": True},
        ],
    }


async def test_scripted_tool_use_stream(provider: AnthropicProvider, server: ScriptedAnthropic) -> None:
    server.enqueue(tool_use_stream([("lookup_device", '{"hostname": "web-1"}'), ("list_devices", "")], "Looking."))
    events = await collect(provider, tools=(DEVICES,))
    first, second = scripted_tool_use_id(0), scripted_tool_use_id(1)
    assert events == [
        TextDelta(["Looking."]),
        ToolCallStarted(call_id=first, name="lookup_device"),
        ToolCallReady(call_id=first, name="lookup_device", arguments='{"hostname": "web-1"}'),
        ToolCallStarted(call_id=second, name="list_devices"),
        ToolCallReady(call_id=second, name="list_devices", arguments="{}"),
        Usage(input_tokens=12, output_tokens=3),
        Finished(reason="tool_calls"),
    ]


async def test_scripted_tool_use_stream_without_text_and_after_thinking(
    provider: AnthropicProvider, server: ScriptedAnthropic
) -> None:
    server.enqueue(message_stream([], thinking=["hmm"], tool_uses=[("lookup_device", "{}")], stop_reason="tool_use"))
    events = await collect(provider, tools=(DEVICES,))
    assert [type(e) for e in events] == [ReasoningDelta, ToolCallStarted, ToolCallReady, Usage, Finished]


async def test_golden_transcript_in_small_tcp_pieces(provider: AnthropicProvider, server: ScriptedAnthropic) -> None:
    server.enqueue(sse_replay((FIXTURES / "cache-usage.sse").read_bytes(), chunk_size=7, delay=0.001))
    events = await collect(provider)
    assert texts(events) == "Cached prefix."
    assert events[-2:] == [
        Usage(input_tokens=12, output_tokens=9, cache_read_tokens=10240, cache_write_tokens=2048),
        Finished(reason="stop"),
    ]


async def test_keepalive_connection_is_reused_between_turns(server: ScriptedAnthropic) -> None:
    # The end of the chunked body trails message_stop by a moment (a paced comment, then the
    # terminator): only a provider that reads past message_stop can hand the connection back.
    paced = message_stream(["Hello", " world"])
    late_end = Stream(chunks=[*paced.chunks, b": trailing\n\n"], delay=0.03)
    server.enqueue(late_end, late_end)
    created: list[object] = []

    async def on_create(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
        created.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        provider = AnthropicProvider(api_key="k", base_url=server.base_url, options=UpstreamOptions(session=session))
        for _ in range(3):
            assert texts(await collect(provider)) == "Hello world"
        await provider.aclose()
        assert not session.closed  # an injected session belongs to the caller
    assert len(created) == 1


# --- retries before the first event ----------------------------------------------------------------


async def test_529_then_429_with_retry_after_then_success(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(
        Reply(529, error_body("overloaded_error")),
        Reply(429, error_body("rate_limit_error", "slow down"), headers={"retry-after": "0.25"}),
        message_stream(["ok"]),
    )
    assert texts(await collect(provider)) == "ok"
    assert len(server.requests) == 3
    backoff, honoured = sleeps.delays
    assert 0.25 <= backoff <= 0.5  # retry_base_delay 0.5 with jitter
    assert honoured == 0.25


async def test_in_stream_overloaded_before_any_text_is_retried(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(sse_replay((FIXTURES / "overloaded-before-text.sse").read_bytes()), message_stream(["fine"]))
    assert texts(await collect(provider)) == "fine"
    assert len(server.requests) == 2
    assert len(sleeps.delays) == 1


async def test_retries_give_up_after_max_retries(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.set_default(Reply(529, error_body("overloaded_error")))
    _, error = await failing(provider)
    assert (error.kind, error.status) == (K.OVERLOADED, 529)
    assert len(server.requests) == 4
    assert len(sleeps.delays) == 3


async def test_retry_after_beyond_the_cap_gives_up_at_once(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(Reply(429, error_body("rate_limit_error"), headers={"retry-after": "60"}))
    _, error = await failing(provider)
    assert (error.kind, error.retry_after) == (K.RATE_LIMITED, 60.0)
    assert sleeps.delays == []


async def test_server_closing_without_an_answer_is_retried(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(Refuse(), message_stream(["back"]))
    assert texts(await collect(provider)) == "back"
    assert len(sleeps.delays) == 1


async def test_connection_refused_is_retried_then_unavailable(sleeps: Sleeps) -> None:
    provider = AnthropicProvider(
        api_key="k", base_url=f"http://127.0.0.1:{free_port()}", options=UpstreamOptions(max_retries=2, sleep=sleeps)
    )
    try:
        _, error = await failing(provider)
    finally:
        await provider.aclose()
    assert (error.kind, error.status) == (K.UNAVAILABLE, None)
    assert len(sleeps.delays) == 2


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(401, error_body("authentication_error", "invalid x-api-key")), K.AUTH),
        (Reply(403, error_body("permission_error", "no access")), K.AUTH),
        (Reply(404, error_body("not_found_error", "model: claude-sonnet-4-5")), K.MODEL_NOT_FOUND),
        (
            Reply(400, error_body("invalid_request_error", "prompt is too long: 208656 tokens > 200000 maximum")),
            K.CONTEXT_LENGTH,
        ),
        (Reply(400, error_body("invalid_request_error", "messages: field required")), K.BAD_REQUEST),
    ],
)
async def test_client_errors_are_classified_and_not_retried(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps, reply: Reply, kind: K
) -> None:
    server.enqueue(reply)
    _, error = await failing(provider)
    assert (error.kind, error.status) == (kind, reply.status)
    assert sleeps.delays == []
    assert len(server.requests) == 1


async def test_error_body_is_logged_never_shown(
    provider: AnthropicProvider, server: ScriptedAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    body = error_body("api_error", "Internal error at /srv/anthropic/secret.py:42")
    server.set_default(Reply(500, body, headers={"request-id": "req_0123"}))
    with caplog.at_level(logging.WARNING, logger="parley.providers"):
        _, error = await failing(provider)
    assert (error.kind, error.status) == (K.HTTP, 500)
    assert "secret.py" not in str(error)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret.py" in logged
    assert "req_0123" in logged


async def test_redirect_is_an_error_and_not_followed(provider: AnthropicProvider, server: ScriptedAnthropic) -> None:
    server.enqueue(Reply(307, None, headers={"Location": server.base_url + "/v1/messages"}))
    _, error = await failing(provider)
    assert (error.kind, error.status) == (K.HTTP, 307)
    assert len(server.requests) == 1


# --- failures after the first event ----------------------------------------------------------------


async def test_no_retry_after_the_first_token(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(message_stream(["one ", "two ", "three "], input_tokens=40, finish=False, delay=0.01, end="drop"))
    events, error = await failing(provider)
    assert texts(events) == "one two three "
    assert error.kind is K.STREAM
    assert isinstance(error, StreamFailedError)
    # 14 characters shown ≈ 4 tokens: more than message_start's 1, so the estimate is billed.
    assert error.partial_usage == Usage(input_tokens=40, output_tokens=4, estimated=True)
    assert sleeps.delays == []
    assert len(server.requests) == 1


async def test_in_stream_overloaded_after_text(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(message_stream(["Partial"], error="overloaded_error"))
    events, error = await failing(provider)
    assert texts(events) == "Partial"
    assert error.kind is K.OVERLOADED
    assert error.status is None
    assert "scripted" not in error.message
    assert isinstance(error, StreamFailedError)
    assert error.partial_usage == Usage(input_tokens=12, output_tokens=2, estimated=True)
    assert sleeps.delays == []
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("fixture", "kind", "text"),
    [
        ("eof-without-message-stop", K.TRUNCATED, "Once upon"),
        ("prompt-too-long-in-stream", K.CONTEXT_LENGTH, ""),
    ],
)
async def test_stream_failures(
    provider: AnthropicProvider, server: ScriptedAnthropic, fixture: str, kind: K, text: str
) -> None:
    server.enqueue(sse_replay((FIXTURES / f"{fixture}.sse").read_bytes(), chunk_size=64))
    events, error = await failing(provider)
    assert (error.kind, texts(events)) == (kind, text)
    assert len(server.requests) == 1


async def test_stall_before_the_first_byte_times_out(
    provider: AnthropicProvider, server: ScriptedAnthropic, sleeps: Sleeps
) -> None:
    server.enqueue(Stall())
    started = time.monotonic()
    _, error = await failing(provider)
    assert error.kind is K.TIMEOUT
    assert 0.3 < time.monotonic() - started < 3
    assert sleeps.delays == []
    assert await server.wait_closed_async()


async def test_stall_mid_stream_times_out_with_partial_usage(
    provider: AnthropicProvider, server: ScriptedAnthropic
) -> None:
    server.enqueue(message_stream(["a", "b"], finish=False, end="stall"))
    events, error = await failing(provider)
    assert texts(events) == "ab"
    assert error.kind is K.TIMEOUT
    assert isinstance(error, StreamFailedError)
    assert error.partial_usage == Usage(input_tokens=12, output_tokens=1)
    assert await server.wait_closed_async()


async def test_pings_keep_a_slow_stream_alive(provider: AnthropicProvider, server: ScriptedAnthropic) -> None:
    # Pings every 0.15 s for ~0.9 s against a 0.4 s idle timeout: never idle, never timed out.
    server.enqueue(message_stream(["x"] * 3, ping_every=1, delay=0.15))
    assert texts(await collect(provider)) == "xxx"


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    provider: AnthropicProvider, server: ScriptedAnthropic
) -> None:
    server.enqueue(message_stream(["tok "] * 2000, delay=0.005))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(HELLO, model="claude-sonnet-4-5"):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await server.wait_closed_async(within=1.0)
    assert not server.requests[-1].completed.is_set()


async def test_closing_the_generator_early_closes_the_upstream_connection(
    provider: AnthropicProvider, server: ScriptedAnthropic
) -> None:
    server.enqueue(message_stream(["tok "] * 2000, delay=0.005))
    stream = provider.stream(HELLO, model="claude-sonnet-4-5")
    assert isinstance((await anext(stream))[0], TextDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await server.wait_closed_async(within=1.0)
    assert not server.requests[-1].completed.is_set()


# --- construction and address policy ---------------------------------------------------------------


async def test_literal_metadata_address_is_refused(sleeps: Sleeps) -> None:
    provider = AnthropicProvider(api_key="k", base_url="http://169.254.169.254", options=UpstreamOptions(sleep=sleeps))
    try:
        _, error = await failing(provider)
    finally:
        await provider.aclose()
    assert isinstance(error, AddressNotAllowedError)
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"cache_ttl": "24h"}, "cache_ttl"),
        ({"thinking_budget": 100}, "thinking_budget"),
        ({"default_max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        AnthropicProvider(api_key="k", **kwargs)


def test_name() -> None:
    assert AnthropicProvider(api_key="k").name == "anthropic"
