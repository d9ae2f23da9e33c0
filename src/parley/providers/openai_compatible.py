"""Provider for any OpenAI-compatible `/chat/completions` server (vLLM, llama.cpp, Ollama, …).

The wire format lives in `openai_wire.py` (pure); this module does the HTTP through the shared
`UpstreamClient`: connect-time address policy, retries before the first event, error
classification, idle timeout and cancellation. One quirk handled here: llama-cpp-python answers
an over-long streamed prompt with HTTP 200 and an empty body, so an empty stream is followed by
one non-streamed probe that says what went wrong.

Imports: standard library, aiohttp, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import ChatMessage, ProviderEvent
from parley.providers.http import (
    NETWORK_ERRORS,
    AddressNotAllowedError,
    StreamFailedError,
    UpstreamClient,
    literal_refusal,
    read_event_batches,
)
from parley.providers.openai_wire import OpenAIStreamTranslator, build_request, classify_error

__all__ = ["OpenAICompatibleProvider"]

logger = logging.getLogger("parley.providers")

Kind = ProviderErrorKind
_RETRY_KINDS = frozenset({Kind.UNAVAILABLE})


def _retry_status(status: int) -> bool:
    return status in (429, 502, 503, 504)


def _classify(status: int | None, body: object) -> ProviderErrorKind:
    return classify_error(status, body, default=Kind.HTTP)


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
        self._refusal = literal_refusal(base_url)
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        self._probe_headers = {**headers, "Accept": "application/json"}
        self._http = UpstreamClient(
            url=base_url.rstrip("/") + "/chat/completions",
            headers=headers,
            classify=_classify,
            label="model server",
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            max_retry_delay=max_retry_delay,
            session=session,
            sleep=sleep,
        )

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
        body = build_request(messages, model, max_tokens)
        payload = orjson.dumps(body)
        prompt_chars = sum(len(m["content"]) for m in body["messages"])
        response = await self._open_with_retries(payload)
        translator = OpenAIStreamTranslator(prompt_chars=prompt_chars)
        # Leaving this block any way (error, cancellation, the caller closing the generator)
        # releases the unfinished response, which closes the connection: the server stops.
        async with response:
            async for batch in read_event_batches(response.content, translator):
                yield batch
        if not translator.saw_chunk:
            raise await self._probe(body)
        yield translator.finish()

    async def _open_with_retries(self, payload: bytes) -> aiohttp.ClientResponse:
        http = self._http
        attempt = 0
        while True:
            try:
                return await http.open(payload)
            except ProviderError as exc:
                delay = http.retry_delay(exc, attempt, retry_status=_retry_status, retry_kinds=_RETRY_KINDS)
                if delay is None:
                    raise
            attempt += 1
            logger.info("retrying the model server in %.2fs (attempt %d)", delay, attempt)
            await http.sleep(delay)

    async def _probe(self, body: dict[str, Any]) -> ProviderError:
        """Re-ask without streaming (1 token) after an empty stream, to learn why it was empty."""
        probe = {k: v for k, v in body.items() if k != "stream_options"}
        probe["stream"] = False
        probe["max_tokens"] = 1
        payload = orjson.dumps(probe)
        http = self._http
        # uvicorn closes the connection after such a failure, but aiohttp has already pooled it
        # (the body ended cleanly): the first try may get that dead socket.
        for _ in range(2):
            try:
                async with http.session().post(
                    http.url,
                    data=payload,
                    headers=self._probe_headers,
                    allow_redirects=False,
                    timeout=http.timeout,
                ) as response:
                    if not 200 <= response.status < 300:
                        return await http.status_error(response)
                    break
            except aiohttp.ClientConnectionError as exc:
                if isinstance(exc, TimeoutError):
                    break
                continue  # dead pooled socket (disconnect or reset): once more, on a new one
            except NETWORK_ERRORS as exc:
                logger.warning("probe after an empty stream failed (%s): %s", type(exc).__name__, exc)
                break
        logger.warning("model server %s sent an empty stream", http.url)
        return StreamFailedError(Kind.TRUNCATED)
