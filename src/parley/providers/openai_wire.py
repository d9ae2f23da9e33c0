"""OpenAI chat-completions wire translation: request bodies out, stream chunks in. Pure, no I/O.

`build_request` makes the streaming body (no tools ever; reasoning never sent back);
`OpenAIStreamTranslator` turns decoded SSE events into provider events and is tested byte-split
against golden transcripts; `classify_error` maps an error answer, HTTP or in-stream, to a kind.
Wire details follow `reference/protocols-security.md` §A (vLLM, llama.cpp, llama-cpp-python,
Ollama quirks). Upstream error text goes to the log, never into an exception message.

Imports: standard library, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    Finished,
    ProviderEvent,
    ToolCallPart,
    ToolResultPart,
    Usage,
    add_reasoning,
    add_text,
    estimate_tokens,
)
from parley.providers.http import StreamFailedError
from parley.providers.sse import ServerSentEvent
from parley.providers.think import ThinkSplitter

__all__ = ["OpenAIStreamTranslator", "build_request", "classify_error"]

logger = logging.getLogger("parley.providers")

Kind = ProviderErrorKind
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


def _int(value: object) -> int:
    return value if type(value) is int else 0


# --- stream translation (pure) -------------------------------------------------------------------


class OpenAIStreamTranslator:
    """Chat-completion chunks in, provider events out; one instance per upstream response."""

    __slots__ = (
        "_chunks_with_text",
        "_prompt_chars",
        "_template",
        "_templates_tried",
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
        self._template: tuple[str, str] | None = None  # see feed
        self._templates_tried = 0
        self.done = False  # `[DONE]` was seen: stop reading
        self.saw_chunk = False  # at least one JSON chunk arrived
        self.finish_reason: str | None = None

    def feed(self, events: Sequence[ServerSentEvent], out: list[ProviderEvent]) -> None:
        """Translate a read's SSE events into `out`; raises ProviderError for in-stream errors and
        tool calls, after the events that came before them.

        A server sends every token of a reply in the same envelope: the chunks differ only in the
        content string. Once one such chunk has been parsed, its text before and after that
        string is kept (`_content_template`); a later chunk made of the same two pieces around a
        JSON string is that same chunk with another content, so only the string is parsed. This
        runs once per token.
        """
        loads = orjson.loads
        for sse in events:
            if self.done:
                return
            data = sse.data
            template = self._template
            if template is not None and data.startswith(template[0]) and data.endswith(template[1]):
                try:
                    content = loads(data[len(template[0]) : len(data) - len(template[1])])
                except orjson.JSONDecodeError:
                    content = None
                if type(content) is str and sse.event == "message":
                    if content:
                        self._chunks_with_text += 1
                        add_text(out, content)
                    continue
            self._chunk(sse, out)

    def _chunk(self, sse: ServerSentEvent, out: list[ProviderEvent]) -> None:
        """One event parsed whole."""
        data = sse.data
        if data[:1] != "{":
            stripped = data.strip()
            # Keep-alives sent as data (empty, `: ping`) must not reach the JSON parser.
            if not stripped or stripped[0] == ":":
                return
            if stripped.startswith("[DONE]"):
                self.done = True
                return
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
            return
        choice = choices[0] if type(choices) is list else None
        delta = choice.get("delta") if type(choice) is dict else None
        if type(choice) is not dict or (delta and type(delta) is not dict):
            logger.warning("model server sent a stream event of an unknown shape: %.300r", data)
            raise self.error(Kind.STREAM)
        if delta:
            self._delta(delta, out)
        reason = choice.get("finish_reason")
        if reason:
            if reason in ("tool_calls", "function_call"):
                raise self.error(Kind.TOOLS_UNSUPPORTED)
            self.finish_reason = str(reason)
            self._pieces(*self._think.finish(), out)
        elif (
            not usage
            and self._templates_tried < _TEMPLATE_TRIES
            and self._think.passthrough
            and type(delta) is dict
            and len(delta) == 1
            and type(delta.get("content")) is str
        ):  # the common token chunk: learn its envelope
            self._templates_tried += 1
            self._template = _content_template(data, chunk) or self._template

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
            input_tokens=estimate_tokens(self._prompt_chars),
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

    def _delta(self, delta: dict[str, Any], out: list[ProviderEvent]) -> None:
        if delta.get("tool_calls") or delta.get("function_call"):
            raise self.error(Kind.TOOLS_UNSUPPORTED)
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        content = delta.get("content")
        if not reasoning and not content:
            return
        self._chunks_with_text += 1
        if reasoning and type(reasoning) is str:
            add_reasoning(out, reasoning)
        if type(content) is str:
            if self._think.passthrough:
                add_text(out, content)
            else:
                self._pieces(*self._think.feed(content), out)
        elif type(content) is list:
            self._content_parts(content, out)
        elif content:
            logger.warning("model server sent content of type %s; dropped", type(content).__name__)
            raise self.error(Kind.STREAM)

    @staticmethod
    def _pieces(answer: str, thought: str, out: list[ProviderEvent]) -> None:
        if thought:
            add_reasoning(out, thought)
        if answer:
            add_text(out, answer)

    @staticmethod
    def _content_parts(parts: list[Any], out: list[ProviderEvent]) -> None:
        # Mistral streams content as typed parts: text, thinking (nested or flat), references.
        for part in parts:
            kind = part.get("type") if type(part) is dict else None
            if kind == "text" and part.get("text"):
                add_text(out, str(part["text"]))
            elif kind == "thinking":
                thinking = part.get("thinking")
                if type(thinking) is list:
                    thinking = "".join(str(p.get("text") or "") for p in thinking if type(p) is dict and p.get("text"))
                if thinking and type(thinking) is str:
                    add_reasoning(out, thinking)
            else:
                logger.debug("dropped a content part of type %r", kind)


# A stream whose envelope changes from token to token (a per-chunk id or timestamp) stops learning
# templates after this many, and goes on with whole-chunk parsing.
_TEMPLATE_TRIES = 4
_PROBE = "\x01probe"


def _content_template(data: str, chunk: dict[str, Any]) -> tuple[str, str] | None:
    """The text before and after the content string of a common token chunk, or None.

    `data` is the raw chunk and `chunk` its parse (`choices[0].delta` is `{"content": str}`). The
    string's place is guessed from the last `"content":`, then proven: the two pieces around
    another string must parse to `chunk` with that string as its content. JSON is lexed without
    context and a string token ends at its own closing quote, so the same then holds for any
    string: `prefix + <JSON string> + suffix` is always this chunk with another content.
    """
    start = data.rfind('"content":')
    if start < 0:
        return None
    start += len('"content":')
    while start < len(data) and data[start] in " \t\r\n":
        start += 1
    if data[start : start + 1] != '"':
        return None
    end = start + 1
    while True:  # the closing quote: one not escaped by an odd run of backslashes
        end = data.find('"', end)
        if end < 0:
            return None
        backslashes = len(data[start + 1 : end]) - len(data[start + 1 : end].rstrip("\\"))
        end += 1
        if backslashes % 2 == 0:
            break
    prefix, suffix = data[:start], data[end:]
    try:
        probed = orjson.loads(prefix + orjson.dumps(_PROBE).decode() + suffix)
    except orjson.JSONDecodeError:
        return None
    expected = {**chunk, "choices": [{**chunk["choices"][0], "delta": {"content": _PROBE}}, *chunk["choices"][1:]]}
    return (prefix, suffix) if probed == expected else None


def build_request(messages: Sequence[ChatMessage], model: str, max_tokens: int | None) -> dict[str, Any]:
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
