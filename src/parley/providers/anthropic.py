"""Provider for the Anthropic Messages API (and Anthropic-dialect servers: vLLM, gateways).

A raw client, not the `anthropic` SDK (reasons in docs/providers-anthropic.md): aiohttp with
the shared SSE decoder, the sibling provider's connect-time address policy and exception seam,
and the pure wire translation in `anthropic_wire`. This module does the HTTP: headers, retries
before the first event (HTTP 429/529/5xx, refused connections, and in-stream overloaded / rate
limit / api errors that arrive before any text), error classification, idle timeout and
cancellation. Upstream error bodies go to the log and never into an exception message.

Imports: standard library, aiohttp, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

import aiohttp
import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.anthropic_wire import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    CacheTTL,
    build_request,
    classify_error,
)
from parley.providers.base import ChatMessage, ProviderEvent
from parley.providers.openai_compatible import (
    _NETWORK_ERRORS,
    AddressNotAllowedError,
    PolicyResolver,
    _literal_refusal,
    _parse_retry_after,
    _translate,
)
from parley.providers.sse import SSEDecoder

__all__ = ["DEFAULT_ANTHROPIC_BASE_URL", "DEFAULT_ANTHROPIC_VERSION", "AnthropicProvider"]

logger = logging.getLogger("parley.providers.anthropic")

Kind = ProviderErrorKind
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
MIN_THINKING_BUDGET = 1024  # the API refuses smaller budgets
_MAX_ERROR_BODY = 64 * 1024
# Before anything was yielded these in-stream errors are as retryable as their HTTP twins
# (529, 429, 500): the SDK does not retry them, which is one reason this client is raw.
_IN_STREAM_RETRY_KINDS = frozenset({Kind.UNAVAILABLE, Kind.OVERLOADED, Kind.RATE_LIMITED, Kind.HTTP})
# After message_stop only the chunked-body terminator should follow; waiting briefly for it lets
# the keep-alive connection go back to the pool (no new TLS handshake next turn).
_DRAIN_SECONDS = 0.25
_DRAIN_BYTES = 16 * 1024


class AnthropicProvider:
    """Streams Messages API replies from one base URL (see the module docstring)."""

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_ANTHROPIC_BASE_URL,
        version: str = DEFAULT_ANTHROPIC_VERSION,
        connect_timeout: float = 10,
        idle_timeout: float = 120,
        max_retries: int = 3,
        retry_base_delay: float = 0.5,
        max_retry_delay: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        cache_ttl: CacheTTL = "5m",
        thinking_budget: int | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        if cache_ttl not in ("5m", "1h"):
            raise ValueError(f"cache_ttl must be '5m' or '1h', not {cache_ttl!r}")
        if thinking_budget is not None and thinking_budget < MIN_THINKING_BUDGET:
            raise ValueError(f"thinking_budget must be at least {MIN_THINKING_BUDGET} tokens")
        if default_max_tokens < 1:
            raise ValueError("default_max_tokens must be positive")
        base = base_url.rstrip("/")
        # Accept an OpenAI-style base ending in /v1 as well as the SDK-style bare origin.
        self._url = (base if base.endswith("/v1") else base + "/v1") + "/messages"
        self._refusal = _literal_refusal(base_url)
        self._headers = {
            "x-api-key": api_key,
            "anthropic-version": version,
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        if cache_ttl == "1h":
            # The 1-hour TTL shipped as a beta; Anthropic keeps accepting retired beta names.
            self._headers["anthropic-beta"] = "extended-cache-ttl-2025-04-11"
        # sock_read bounds every wait for bytes, including the wait for the response headers;
        # Anthropic pings during long thinking, so a quiet connection is a dead one.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=idle_timeout)
        self._max_retries = max_retries
        self._retry_base_delay = retry_base_delay
        self._max_retry_delay = max_retry_delay
        self._session = session
        self._owns_session = False
        self._sleep = sleep
        self._cache_ttl: CacheTTL = cache_ttl
        self._thinking_budget = thinking_budget
        self._default_max_tokens = default_max_tokens

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pool limit: concurrency is bounded by running turns (as in the sibling provider).
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
        body = build_request(
            messages,
            model=model,
            max_tokens=max_tokens or self._default_max_tokens,
            cache_ttl=self._cache_ttl,
            thinking_budget=self._thinking_budget,
        )
        payload = orjson.dumps(body)
        session = self._get_session()
        attempt = 0
        while True:
            yielded = False
            try:
                # aclosing: a consumer that stops early (or is cancelled) closes the attempt,
                # which releases the response and so closes the upstream connection at once.
                async with contextlib.aclosing(self._attempt(session, payload)) as events:
                    async for event in events:
                        yielded = True
                        yield event
                return
            except ProviderError as exc:
                delay = None if yielded else self._retry_delay(exc, attempt)
                if delay is None:
                    raise
            attempt += 1
            logger.info("retrying Anthropic in %.2fs (attempt %d)", delay, attempt)
            await self._sleep(delay)

    async def _attempt(self, session: aiohttp.ClientSession, payload: bytes) -> AsyncGenerator[ProviderEvent, None]:
        """One request: open, stream, translate. Raises ProviderError for every failure."""
        response = await self._open(session, payload)
        translator = AnthropicStreamTranslator()
        decoder = SSEDecoder()
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
            if not translator.started:
                # A gateway that ignored `stream: true` answers plain JSON: say so in the log.
                logger.warning(
                    "Anthropic %s sent no message_start (content-type %r)",
                    self._url,
                    response.headers.get("Content-Type"),
                )
            for event in translator.finish():  # raises TRUNCATED when message_stop never came
                yield event
            await _drain(content)

    def _retry_delay(self, exc: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if attempt >= self._max_retries or isinstance(exc, AddressNotAllowedError):
            return None
        if exc.status is not None:
            if exc.status != 429 and exc.status < 500:
                return None
        elif exc.kind not in _IN_STREAM_RETRY_KINDS:
            return None
        if exc.retry_after is not None:
            # Retrying sooner than asked would fail again; a longer wait is the user's call.
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
        request_id = response.headers.get("request-id")
        raw = b""
        try:
            while len(raw) < _MAX_ERROR_BODY:
                piece = await response.content.read(_MAX_ERROR_BODY - len(raw))
                if not piece:
                    break
                raw += piece
        except _NETWORK_ERRORS:
            pass  # classify by status alone
        if 300 <= status < 400:
            logger.warning(
                "Anthropic %s answered HTTP %d (redirect to %r, not followed)",
                self._url,
                status,
                response.headers.get("Location"),
            )
            return ProviderError(Kind.HTTP, status=status)
        text = raw.decode("utf-8", "replace")
        logger.warning("Anthropic %s answered HTTP %d (request %s): %s", self._url, status, request_id, text)
        try:
            parsed: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = text
        return ProviderError(
            classify_error(status, parsed, default=Kind.HTTP),
            status=status,
            retry_after=_parse_retry_after(response.headers.get("retry-after")),
        )


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what follows message_stop (briefly, boundedly) so the connection can be reused."""
    received = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while received <= _DRAIN_BYTES and (piece := await content.readany()):
                received += len(piece)
    except (*_NETWORK_ERRORS, TimeoutError):
        pass  # the connection is closed instead of reused; the reply itself is complete
