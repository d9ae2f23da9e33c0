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
from parley.providers.http import (
    NETWORK_ERRORS,
    AddressNotAllowedError,
    UpstreamClient,
    literal_refusal,
    read_event_batches,
)

__all__ = ["DEFAULT_ANTHROPIC_BASE_URL", "DEFAULT_ANTHROPIC_VERSION", "AnthropicProvider"]

logger = logging.getLogger("parley.providers.anthropic")

Kind = ProviderErrorKind
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
MIN_THINKING_BUDGET = 1024  # the API refuses smaller budgets
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
        self._refusal = literal_refusal(base_url)
        headers = {
            "x-api-key": api_key,
            "anthropic-version": version,
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        if cache_ttl == "1h":
            # The 1-hour TTL shipped as a beta; Anthropic keeps accepting retired beta names.
            headers["anthropic-beta"] = "extended-cache-ttl-2025-04-11"
        # Anthropic pings during long thinking, so a quiet connection (idle_timeout) is a dead one.
        self._http = UpstreamClient(
            # Accept an OpenAI-style base ending in /v1 as well as the SDK-style bare origin.
            url=(base if base.endswith("/v1") else base + "/v1") + "/messages",
            headers=headers,
            classify=_classify,
            label="Anthropic",
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            max_retry_delay=max_retry_delay,
            session=session,
            sleep=sleep,
            request_id_header="request-id",
        )
        self._cache_ttl: CacheTTL = cache_ttl
        self._thinking_budget = thinking_budget
        self._default_max_tokens = default_max_tokens

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int | None = None,
    ) -> AsyncIterator[Sequence[ProviderEvent]]:
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
        http = self._http
        attempt = 0
        while True:
            yielded = False
            try:
                # aclosing: a consumer that stops early (or is cancelled) closes the attempt,
                # which releases the response and so closes the upstream connection at once.
                async with contextlib.aclosing(self._attempt(payload)) as batches:
                    async for batch in batches:
                        yielded = True
                        yield batch
                return
            except ProviderError as exc:
                delay = (
                    None
                    if yielded
                    else http.retry_delay(exc, attempt, retry_status=_retry_status, retry_kinds=_IN_STREAM_RETRY_KINDS)
                )
                if delay is None:
                    raise
            attempt += 1
            logger.info("retrying Anthropic in %.2fs (attempt %d)", delay, attempt)
            await http.sleep(delay)

    async def _attempt(self, payload: bytes) -> AsyncGenerator[Sequence[ProviderEvent], None]:
        """One request: open, stream, translate. Raises ProviderError for every failure."""
        response = await self._http.open(payload)
        translator = AnthropicStreamTranslator()
        async with response:
            async for batch in read_event_batches(response.content, translator):
                yield batch
            if not translator.started:
                # A gateway that ignored `stream: true` answers plain JSON: say so in the log.
                logger.warning(
                    "Anthropic %s sent no message_start (content-type %r)",
                    self._http.url,
                    response.headers.get("Content-Type"),
                )
            last = translator.finish()  # raises TRUNCATED when message_stop never came
            if last:
                yield last
            await _drain(response.content)


def _retry_status(status: int) -> bool:
    return status == 429 or status >= 500


def _classify(status: int | None, body: object) -> ProviderErrorKind:
    return classify_error(status, body, default=Kind.HTTP)


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read what follows message_stop (briefly, boundedly) so the connection can be reused."""
    received = 0
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while received <= _DRAIN_BYTES and (piece := await content.readany()):
                received += len(piece)
    except (*NETWORK_ERRORS, TimeoutError):
        pass  # the connection is closed instead of reused; the reply itself is complete
