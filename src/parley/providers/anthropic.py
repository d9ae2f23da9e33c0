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
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
import orjson

from parley.errors import ProviderErrorKind
from parley.providers.anthropic_wire import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    CacheTTL,
    build_request,
    classify_error,
)
from parley.providers.base import ChatMessage, ContextWindow, ProviderEvent, ToolChoice, ToolSpec
from parley.providers.http import NETWORK_ERRORS, UpstreamClient, UpstreamOptions

__all__ = ["DEFAULT_ANTHROPIC_BASE_URL", "DEFAULT_ANTHROPIC_VERSION", "AnthropicProvider"]

logger = logging.getLogger("parley.providers.anthropic")

Kind = ProviderErrorKind
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
MIN_THINKING_BUDGET = 1024  # the API refuses smaller budgets
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
        options: UpstreamOptions | None = None,
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
        headers = {
            "x-api-key": api_key,
            "anthropic-version": version,
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        if cache_ttl == "1h":
            # The 1-hour TTL shipped as a beta; Anthropic keeps accepting retired beta names.
            headers["anthropic-beta"] = "extended-cache-ttl-2025-04-11"
        # Accept an OpenAI-style base ending in /v1 as well as the SDK-style bare origin.
        api = base if base.endswith("/v1") else base + "/v1"
        self._models_url = api + "/models"
        self._probe_headers = {"x-api-key": api_key, "anthropic-version": version, "Accept": "application/json"}
        # Anthropic pings during long thinking, so a quiet connection (idle_timeout) is a dead one.
        self._http = UpstreamClient(
            url=api + "/messages",
            headers=headers,
            classify=_classify,
            label="Anthropic",
            options=options or UpstreamOptions(),
            request_id_header="request-id",
        )
        self._cache_ttl: CacheTTL = cache_ttl
        self._thinking_budget = thinking_budget
        self._default_max_tokens = default_max_tokens

    async def context_window(self, model: str) -> ContextWindow | None:
        """Anthropic's API does not say; the window comes from the model table (billing/prices.py)."""
        return None

    async def count_tokens(self, model: str, text: str) -> int | None:
        """Not asked: a Claude window (200,000 tokens) leaves room for the estimate's margin, and
        its counting endpoint is a metered API call."""
        return None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def probe(self) -> str | None:
        """GET `/v1/models` (a list of models, generated nothing, billed nothing)."""
        return await self._http.probe(self._models_url, self._probe_headers)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[Sequence[ProviderEvent]]:
        body = build_request(
            messages,
            model=model,
            max_tokens=max_tokens or self._default_max_tokens,
            cache_ttl=self._cache_ttl,
            thinking_budget=self._thinking_budget,
            tools=tools,
            tool_choice=tool_choice,
        )
        return self._http.stream(orjson.dumps(body), AnthropicStreamTranslator, self._end)

    async def _end(
        self, translator: AnthropicStreamTranslator, response: aiohttp.ClientResponse
    ) -> list[ProviderEvent]:
        if not translator.started:
            # A gateway that ignored `stream: true` answers plain JSON: say so in the log.
            logger.warning(
                "Anthropic %s sent no message_start (content-type %r)",
                self._http.url,
                response.headers.get("Content-Type"),
            )
        last = translator.finish()  # raises TRUNCATED when message_stop never came
        await _drain(response.content)
        return last


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
