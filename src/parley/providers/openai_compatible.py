"""Provider for any OpenAI-compatible `/chat/completions` server (vLLM, llama.cpp, Ollama, …).

Two layers: `OpenAIStreamTranslator` turns decoded SSE events into provider events (pure, no I/O,
tested byte-split against golden transcripts), and `OpenAICompatibleProvider` does the HTTP:
connect-time address policy, retries before the first event, error classification, idle timeout
and cancellation. Wire details follow `reference/protocols-security.md` §A; upstream error bodies
go to the log and never into an exception message.

Imports: standard library, aiohttp, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import math
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    Finished,
    ProviderEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from parley.providers.sse import ServerSentEvent, SSEDecoder
from parley.providers.think import ThinkSplitter
from parley.providers.url_policy import address_refusal

__all__ = [
    "AddressNotAllowedError",
    "OpenAICompatibleProvider",
    "OpenAIStreamTranslator",
    "PolicyResolver",
    "StreamFailedError",
    "classify_error",
]

logger = logging.getLogger("parley.providers")

Kind = ProviderErrorKind
_MAX_ERROR_BODY = 64 * 1024
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_NO_EVENTS: tuple[ProviderEvent, ...] = ()
_CONTEXT_MARKERS = (
    "maximum context length",  # vLLM, llama-cpp-python, OpenAI
    "context_length_exceeded",  # llama-cpp-python / OpenAI code
    "exceed_context_size",  # llama.cpp type
    "exceeds the available context size",  # llama.cpp message
    "prompt is too long",  # Anthropic-style relays
    "exceed context window",  # llama-cpp-python's log line, relayed by some wrappers
)
# Servers outside the OpenAI vocabulary (TGI and friends) name the same two endings differently.
_FINISH_ALIASES = {"eos_token": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class StreamFailedError(ProviderError):
    """A failure after the response started; `partial_usage` is what was counted so far."""

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str | None = None,
        *,
        status: int | None = None,
        partial_usage: Usage | None = None,
    ) -> None:
        super().__init__(kind, message, status=status)
        self.partial_usage = partial_usage


class AddressNotAllowedError(ProviderError):
    """The base URL points at an address the SSRF policy refuses; never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(Kind.UNAVAILABLE, f"The model server address is not allowed: {reason}.")


# --- error classification ------------------------------------------------------------------------


def classify_error(status: int | None, body: object, *, default: ProviderErrorKind) -> ProviderErrorKind:
    """The kind for an error answer: `body` is parsed JSON or plain text, `status` None in-stream."""
    err: Any = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        fields = (err.get("message"), err.get("type"), err.get("code"))
        text = " ".join(str(f) for f in fields if f is not None).lower()
        if "n_ctx" in err:  # llama.cpp attaches n_ctx / n_prompt_tokens to overflow errors
            return Kind.CONTEXT_LENGTH
    else:
        text = str(err).lower() if err is not None else ""
    if any(marker in text for marker in _CONTEXT_MARKERS):
        return Kind.CONTEXT_LENGTH
    if status is None:
        return default
    if status in (401, 403):
        return Kind.AUTH
    if status == 404 and "model" in text:
        return Kind.MODEL_NOT_FOUND
    if status == 429:
        return Kind.RATE_LIMITED
    if status in (503, 529):
        return Kind.OVERLOADED
    if 400 <= status < 500:
        return Kind.BAD_REQUEST
    return default


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _int(value: object) -> int:
    return value if type(value) is int else 0


# --- stream translation (pure) -------------------------------------------------------------------


class OpenAIStreamTranslator:
    """Chat-completion chunks in, provider events out; one instance per upstream response."""

    __slots__ = (
        "_chunks_with_text",
        "_prompt_chars",
        "_think",
        "_usage",
        "done",
        "finish_reason",
        "saw_chunk",
    )

    def __init__(self, *, prompt_chars: int = 0, think: ThinkSplitter | None = None) -> None:
        self._prompt_chars = prompt_chars
        self._think = think if think is not None else ThinkSplitter()
        self._usage: tuple[int, int, int] | None = None  # prompt, completion, cached
        self._chunks_with_text = 0
        self.done = False  # `[DONE]` was seen: stop reading
        self.saw_chunk = False  # at least one JSON chunk arrived
        self.finish_reason: str | None = None

    def feed(self, sse: ServerSentEvent) -> Sequence[ProviderEvent]:
        """Translate one SSE event; raises ProviderError for in-stream errors and tool calls."""
        if self.done:
            return _NO_EVENTS
        data = sse.data
        if data[:1] != "{":
            stripped = data.strip()
            # Keep-alives sent as data (empty, `: ping`) must not reach the JSON parser.
            if not stripped or stripped[0] == ":":
                return _NO_EVENTS
            if stripped.startswith("[DONE]"):
                self.done = True
                return _NO_EVENTS
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            logger.warning("model server sent an invalid stream event: %.300r", data)
            raise self.error(Kind.STREAM) from exc
        if type(chunk) is not dict:
            logger.warning("model server sent a non-object stream event: %.300r", data)
            raise self.error(Kind.STREAM)
        self.saw_chunk = True
        if chunk.get("error") is not None or chunk.get("object") == "error" or sse.event == "error":
            logger.warning("model server reported an error mid-stream: %.2000s", data)
            raise self.error(classify_error(None, chunk, default=Kind.STREAM))
        usage = chunk.get("usage")
        if usage:
            self._take_usage(usage)
        choices = chunk.get("choices")
        if not choices:
            return _NO_EVENTS
        choice = choices[0]
        delta = choice.get("delta")
        events = self._delta(delta) if delta else _NO_EVENTS
        reason = choice.get("finish_reason")
        if reason:
            if reason in ("tool_calls", "function_call"):
                raise self.error(Kind.TOOL_CALLS_UNSUPPORTED)
            self.finish_reason = str(reason)
            answer, thought = self._think.finish()
            if answer or thought:
                events = [*events, *self._pieces(answer, thought)]
        return events

    def finish(self) -> list[ProviderEvent]:
        """End of stream: `[Usage, Finished]`, or a TRUNCATED error when no finish reason came."""
        if self.finish_reason is None:
            raise self.error(Kind.TRUNCATED)
        usage = self.partial_usage()
        assert usage is not None  # a finish reason implies a chunk
        reason = self.finish_reason
        return [usage, Finished(reason=_FINISH_ALIASES.get(reason, reason))]

    def partial_usage(self) -> Usage | None:
        """Usage so far: the server's latest counts, else an estimate; None before any chunk."""
        if not self.saw_chunk:
            return None
        if self._usage is not None:
            prompt, completion, cached = self._usage
            return Usage(input_tokens=max(0, prompt - cached), output_tokens=completion, cache_read_tokens=cached)
        return Usage(
            input_tokens=math.ceil(self._prompt_chars / 4),
            output_tokens=self._chunks_with_text,
            estimated=True,
        )

    def error(self, kind: ProviderErrorKind, *, status: int | None = None) -> StreamFailedError:
        """An error for this stream carrying the usage counted so far."""
        return StreamFailedError(kind, status=status, partial_usage=self.partial_usage())

    def _take_usage(self, usage: object) -> None:
        if type(usage) is not dict:
            return
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if type(details) is dict else 0
        self._usage = (_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), cached)

    def _delta(self, delta: dict[str, Any]) -> Sequence[ProviderEvent]:
        if delta.get("tool_calls") or delta.get("function_call"):
            raise self.error(Kind.TOOL_CALLS_UNSUPPORTED)
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        content = delta.get("content")
        if not reasoning and not content:
            return _NO_EVENTS
        self._chunks_with_text += 1
        events: list[ProviderEvent] = []
        if reasoning and type(reasoning) is str:
            events.append(ReasoningDelta(text=reasoning))
        if type(content) is str:
            if self._think.passthrough:
                events.append(TextDelta(text=content))
            else:
                answer, thought = self._think.feed(content)
                events.extend(self._pieces(answer, thought))
        elif type(content) is list:
            self._content_parts(content, events)
        elif content:
            logger.warning("model server sent content of type %s; dropped", type(content).__name__)
            raise self.error(Kind.STREAM)
        return events

    @staticmethod
    def _pieces(answer: str, thought: str) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        if thought:
            events.append(ReasoningDelta(text=thought))
        if answer:
            events.append(TextDelta(text=answer))
        return events

    @staticmethod
    def _content_parts(parts: list[Any], events: list[ProviderEvent]) -> None:
        # Mistral streams content as typed parts: text, thinking (nested or flat), references.
        for part in parts:
            kind = part.get("type") if type(part) is dict else None
            if kind == "text" and part.get("text"):
                events.append(TextDelta(text=str(part["text"])))
            elif kind == "thinking":
                thinking = part.get("thinking")
                if type(thinking) is list:
                    thinking = "".join(str(p.get("text") or "") for p in thinking if type(p) is dict and p.get("text"))
                if thinking and type(thinking) is str:
                    events.append(ReasoningDelta(text=thinking))
            else:
                logger.debug("dropped a content part of type %r", kind)


# --- connect-time address policy -----------------------------------------------------------------


class _RefusedAddress(OSError):
    """Raised inside aiohttp's connector; an OSError so aiohttp wraps it as a connector error."""


class PolicyResolver(AbstractResolver):
    """Resolves with `inner` and drops every address `address_refusal` rejects.

    The connection is made to an address that was checked, so a name cannot be rebound to a
    metadata address between the check and the connect.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_refusal(r["host"]) is None]
        if not allowed:
            reasons = "; ".join(sorted({address_refusal(r["host"]) or "" for r in results}))
            raise _RefusedAddress(f"{host} resolves only to refused addresses ({reasons or 'none'})")
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _literal_refusal(base_url: str) -> str | None:
    host = urlsplit(base_url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a name: the resolver checks what it resolves to
    return address_refusal(host)


def _translate(exc: BaseException, *, started: bool, partial_usage: Usage | None = None) -> ProviderError:
    """The one place foreign (aiohttp / socket) exceptions become ProviderErrors."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, _RefusedAddress):
        return AddressNotAllowedError(str(exc.os_error))
    if isinstance(exc, aiohttp.InvalidURL):
        return AddressNotAllowedError("the URL is not in a form parley accepts")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = Kind.UNAVAILABLE  # the connect itself timed out: like a refused connection
    elif isinstance(exc, TimeoutError):  # aiohttp's sock_read timeout is a TimeoutError too
        kind = Kind.TIMEOUT
    else:
        kind = Kind.STREAM if started else Kind.UNAVAILABLE
    logger.warning("model server connection failed (%s): %s", type(exc).__name__, exc)
    if started:
        return StreamFailedError(kind, partial_usage=partial_usage)
    return ProviderError(kind)


_NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


# --- the provider --------------------------------------------------------------------------------


def _request_body(messages: Sequence[ChatMessage], model: str, max_tokens: int | None) -> dict[str, Any]:
    wire: list[dict[str, str]] = []
    for message in messages:
        if any(isinstance(p, ToolCallPart | ToolResultPart) for p in message.parts):
            raise ProviderError(Kind.BAD_REQUEST, "This provider cannot send tool calls or tool results to the model.")
        # Reasoning parts are display-only: never sent back to a model.
        wire.append({"role": message.role, "content": message.plain_text})
    body: dict[str, Any] = {
        "model": model,
        "messages": wire,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


class OpenAICompatibleProvider:
    """Streams chat completions from one OpenAI-compatible base URL (see module docstring)."""

    name = "openai-compatible"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        connect_timeout: float = 10,
        idle_timeout: float = 120,
        max_retries: int = 3,
        retry_base_delay: float = 0.5,
        max_retry_delay: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._refusal = _literal_refusal(base_url)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        self._probe_headers = {**self._headers, "Accept": "application/json"}
        # sock_read bounds every wait for bytes, including the wait for the response headers.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=idle_timeout)
        self._max_retries = max_retries
        self._retry_base_delay = retry_base_delay
        self._max_retry_delay = max_retry_delay
        self._session = session
        self._owns_session = False
        self._sleep = sleep

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pool limit: concurrency is bounded by the turns running, and a limit would make
            # long streams queue behind each other.
            connector = aiohttp.TCPConnector(resolver=PolicyResolver(), limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._owns_session = False

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int | None = None,
    ) -> AsyncIterator[ProviderEvent]:
        if self._refusal is not None:
            raise AddressNotAllowedError(self._refusal)
        body = _request_body(messages, model, max_tokens)
        payload = orjson.dumps(body)
        prompt_chars = sum(len(m["content"]) for m in body["messages"])
        session = self._get_session()
        response = await self._open_with_retries(session, payload)
        translator = OpenAIStreamTranslator(prompt_chars=prompt_chars)
        decoder = SSEDecoder()
        # Leaving this block any way (error, cancellation, the caller closing the generator)
        # releases the unfinished response, which closes the connection: the server stops.
        async with response:
            content = response.content
            while not translator.done:
                try:
                    chunk = await content.readany()
                except _NETWORK_ERRORS as exc:
                    raise _translate(exc, started=True, partial_usage=translator.partial_usage()) from exc
                if not chunk:
                    for sse in decoder.finish():
                        for event in translator.feed(sse):
                            yield event
                    break
                for sse in decoder.feed(chunk):
                    for event in translator.feed(sse):
                        yield event
        if not translator.saw_chunk:
            # llama-cpp-python answers an over-long streamed prompt with 200 and an empty body;
            # the same request without streaming says what went wrong.
            raise await self._probe(session, body)
        for event in translator.finish():
            yield event

    async def _open_with_retries(self, session: aiohttp.ClientSession, payload: bytes) -> aiohttp.ClientResponse:
        attempt = 0
        while True:
            try:
                return await self._open(session, payload)
            except ProviderError as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
            attempt += 1
            logger.info("retrying the model server in %.2fs (attempt %d)", delay, attempt)
            await self._sleep(delay)

    def _retry_delay(self, exc: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if attempt >= self._max_retries or isinstance(exc, AddressNotAllowedError):
            return None
        if exc.status is not None:
            if exc.status not in _RETRY_STATUSES:
                return None
        elif exc.kind is not Kind.UNAVAILABLE:
            return None
        if exc.retry_after is not None:
            return exc.retry_after if exc.retry_after <= self._max_retry_delay else None
        delay = min(self._max_retry_delay, self._retry_base_delay * 2.0**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter spreads retries of many turns

    async def _open(self, session: aiohttp.ClientSession, payload: bytes) -> aiohttp.ClientResponse:
        try:
            response = await session.post(
                self._url, data=payload, headers=self._headers, allow_redirects=False, timeout=self._timeout
            )
        except _NETWORK_ERRORS as exc:
            raise _translate(exc, started=False) from exc
        if 200 <= response.status < 300:
            return response
        async with response:
            raise await self._status_error(response)

    async def _status_error(self, response: aiohttp.ClientResponse) -> ProviderError:
        status = response.status
        raw = b""
        try:
            while len(raw) < _MAX_ERROR_BODY:
                piece = await response.content.read(_MAX_ERROR_BODY - len(raw))
                if not piece:
                    break
                raw += piece
        except _NETWORK_ERRORS:
            pass  # classify by status alone
        text = raw.decode("utf-8", "replace")
        if 300 <= status < 400:
            logger.warning(
                "model server %s answered HTTP %d (redirect to %r, not followed)",
                self._url,
                status,
                response.headers.get("Location"),
            )
            return ProviderError(Kind.HTTP, status=status)
        logger.warning("model server %s answered HTTP %d: %s", self._url, status, text)
        try:
            parsed: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = text
        return ProviderError(
            classify_error(status, parsed, default=Kind.HTTP),
            status=status,
            retry_after=_parse_retry_after(response.headers.get("Retry-After")),
        )

    async def _probe(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> ProviderError:
        """Re-ask without streaming (1 token) after an empty stream, to learn why it was empty."""
        probe = {k: v for k, v in body.items() if k != "stream_options"}
        probe["stream"] = False
        probe["max_tokens"] = 1
        payload = orjson.dumps(probe)
        # uvicorn closes the connection after such a failure, but aiohttp has already pooled it
        # (the body ended cleanly): the first try may get that dead socket.
        for _ in range(2):
            try:
                async with session.post(
                    self._url,
                    data=payload,
                    headers=self._probe_headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as response:
                    if not 200 <= response.status < 300:
                        return await self._status_error(response)
                    break
            except aiohttp.ClientConnectionError as exc:
                if isinstance(exc, TimeoutError):
                    break
                continue  # dead pooled socket (disconnect or reset): once more, on a new one
            except _NETWORK_ERRORS as exc:
                logger.warning("probe after an empty stream failed (%s): %s", type(exc).__name__, exc)
                break
        logger.warning("model server %s sent an empty stream", self._url)
        return StreamFailedError(Kind.TRUNCATED)
