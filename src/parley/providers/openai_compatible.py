"""Provider for any OpenAI-compatible `/chat/completions` server (vLLM, llama.cpp, Ollama, …).

The wire format lives in `openai_wire.py` (pure); this module does the HTTP through the shared
`UpstreamClient`: connect-time address policy, retries before the first event, error
classification, idle timeout and cancellation. One quirk handled here: llama-cpp-python answers
an over-long streamed prompt with HTTP 200 and an empty body, so an empty stream is followed by
one non-streamed probe that says what went wrong. It answers a streamed request with tools its
chat format cannot stream (`chatml-function-calling` with `tool_choice` auto) the same way, and
then the probe succeeds: an empty stream of a request with tools, that the probe does not
explain, is a server that cannot stream tool calls.

Imports: standard library, aiohttp, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import ChatMessage, ContextWindow, ProviderEvent, ToolChoice, ToolSpec
from parley.providers.context import (
    count_from_llama_cpp,
    count_from_llama_cpp_python,
    count_from_vllm,
    window_from_models,
    window_from_ollama,
    window_from_props,
)
from parley.providers.http import (
    NETWORK_ERRORS,
    AddressNotAllowedError,
    Classify,
    StreamFailedError,
    UpstreamClient,
    UpstreamOptions,
)
from parley.providers.openai_wire import OpenAIStreamTranslator, build_request, classify_error, prompt_chars

__all__ = ["OpenAICompatibleProvider"]

# One question to the server: method, URL, JSON body, what number its answer says, a name for it.
_Probe = tuple[str, str, dict[str, Any] | None, Callable[[Any], int | None], str]

_QUESTION_SECONDS = 3.0  # the most one question about the model (window, tokens) may take

logger = logging.getLogger("parley.providers")

Kind = ProviderErrorKind


def _classify(status: int | None, body: object) -> ProviderErrorKind:
    return classify_error(status, body, default=Kind.HTTP)


def _classify_with_tools(status: int | None, body: object) -> ProviderErrorKind:
    return classify_error(status, body, default=Kind.HTTP, tools=True)


class OpenAICompatibleProvider:
    """Streams chat completions from one OpenAI-compatible base URL (see module docstring)."""

    name = "openai-compatible"

    def __init__(self, *, base_url: str, api_key: str, options: UpstreamOptions | None = None) -> None:
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        self._probe_headers = {**headers, "Accept": "application/json"}
        self._base_url = base_url.rstrip("/")
        self._http = UpstreamClient(
            url=self._base_url + "/chat/completions",
            headers=headers,
            classify=_classify,
            label="model server",
            options=options or UpstreamOptions(),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def context_window(self, model: str) -> ContextWindow | None:
        """Ask the server, as each kind of server can be asked (providers/context.py); None when
        none of them says."""
        origin = self._base_url.removesuffix("/v1")
        found = await self._first_answer(
            (
                (
                    "GET",
                    self._base_url + "/models",
                    None,
                    lambda b: window_from_models(b, model),
                    "/v1/models (max_model_len)",
                ),
                ("GET", origin + "/props", None, window_from_props, "llama.cpp's /props (n_ctx)"),
                ("POST", origin + "/api/show", {"model": model}, window_from_ollama, "Ollama's /api/show (num_ctx)"),
            )
        )
        return ContextWindow(tokens=found[0], source=f"the model server's {found[1]}") if found else None

    async def count_tokens(self, model: str, text: str) -> int | None:
        """Count with the server's tokenizer, as each kind of server offers one (providers/context.py)."""
        origin = self._base_url.removesuffix("/v1")
        found = await self._first_answer(
            (
                ("POST", origin + "/tokenize", {"model": model, "prompt": text}, count_from_vllm, "vLLM"),
                ("POST", origin + "/tokenize", {"content": text}, count_from_llama_cpp, "llama.cpp"),
                (
                    "POST",
                    origin + "/extras/tokenize/count",
                    {"input": text},
                    count_from_llama_cpp_python,
                    "llama-cpp-python",
                ),
            )
        )
        return found[0] if found else None

    async def _first_answer(self, probes: tuple[_Probe, ...]) -> tuple[int, str] | None:
        """The first probe whose answer says a number, and its name. Each waits a few seconds at
        most and is never retried: a server without that route just answers 404."""
        for method, url, payload, read, name in probes:
            try:
                async with self._http.request(
                    method, url, json=payload, headers=self._probe_headers, seconds=_QUESTION_SECONDS
                ) as response:
                    if response.status != 200:
                        continue
                    number = read(await response.json(content_type=None))
            except (*NETWORK_ERRORS, ValueError, AddressNotAllowedError):
                continue
            if number is not None:
                return number, name
        return None

    async def probe(self) -> str | None:
        """GET `/models`: the cheapest request every OpenAI-compatible server answers."""
        return await self._http.probe(self._base_url + "/models", self._probe_headers)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[Sequence[ProviderEvent]]:
        body = build_request(messages, model, max_tokens, tools, tool_choice)
        chars = prompt_chars(body)
        classify = _classify_with_tools if "tools" in body else _classify

        async def end(translator: OpenAIStreamTranslator, _response: aiohttp.ClientResponse) -> list[ProviderEvent]:
            if not translator.saw_chunk:
                raise await self._probe(body, classify)
            return translator.finish()

        return self._http.stream(
            orjson.dumps(body), lambda: OpenAIStreamTranslator(prompt_chars=chars), end, classify=classify
        )

    async def _probe(self, body: dict[str, Any], classify: Classify) -> ProviderError:
        """Re-ask without streaming (1 token) after an empty stream, to learn why it was empty."""
        probe = {k: v for k, v in body.items() if k != "stream_options"}
        probe["stream"] = False
        probe["max_tokens"] = 1
        payload = orjson.dumps(probe)
        http = self._http
        # uvicorn closes the connection after such a failure, but aiohttp has already pooled it
        # (the body ended cleanly): the first try may get that dead socket.
        answered = False
        for _ in range(2):
            try:
                async with http.request("POST", http.url, data=payload, headers=self._probe_headers) as response:
                    if not 200 <= response.status < 300:
                        return await http.status_error(response, classify)
                    answered = True
                    break
            except aiohttp.ClientConnectionError as exc:
                if isinstance(exc, TimeoutError):
                    break
                continue  # dead pooled socket (disconnect or reset): once more, on a new one
            except NETWORK_ERRORS as exc:
                logger.warning("probe after an empty stream failed (%s): %s", type(exc).__name__, exc)
                break
        if answered and "tools" in body:
            logger.warning("model server %s answers with tools only unstreamed: it cannot stream tool calls", http.url)
            return StreamFailedError(Kind.TOOLS_UNSUPPORTED)
        logger.warning("model server %s sent an empty stream", http.url)
        return StreamFailedError(Kind.TRUNCATED)
