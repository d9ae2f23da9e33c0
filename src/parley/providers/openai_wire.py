"""OpenAI chat-completions wire translation: request bodies out, stream chunks in. Pure, no I/O.

`build_request` makes the streaming body (tools, tool calls and results; reasoning never sent
back); `OpenAIStreamTranslator` turns decoded SSE events into provider events and is tested
byte-split against golden transcripts; `classify_error` maps an error answer, HTTP or in-stream,
to a kind. Wire details follow `reference/protocols-security.md` §A and
docs/providers-openai-compatible.md (vLLM, llama.cpp, llama-cpp-python, Ollama quirks). Upstream
error text goes to the log, never into an exception message.

Imports: standard library, orjson, parley.errors, parley.providers.*.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from parley.errors import ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    Finished,
    ForcedTool,
    ProviderEvent,
    ToolCallReady,
    ToolCallStarted,
    ToolChoice,
    ToolSpec,
    Usage,
    add_reasoning,
    add_text,
    estimate_tokens,
)
from parley.providers.http import StreamFailedError
from parley.providers.sse import ServerSentEvent
from parley.providers.think import ThinkSplitter
from parley.providers.tool_calls import (
    arguments_json,
    call_as_text,
    check_tool_choice,
    finished_arguments,
    generated_call_id,
    grammar_safe_schema,
    result_as_text,
    result_output,
    tool_parts,
)

__all__ = ["OpenAIStreamTranslator", "build_request", "classify_error", "prompt_chars"]

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
# How servers say they cannot take tools, when the request carried some (any status: llama.cpp
# says it with a 500, which must not be retried).
_TOOLS_REFUSALS = (
    "does not support tools",  # Ollama: "registry.ollama.ai/library/x does not support tools"
    "tool-call-parser",  # vLLM: '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser'
    "requires --jinja",  # llama.cpp: "tools param requires --jinja flag"
    "unsupported param: tool_choice",  # llama.cpp without --jinja
    "cannot use tools with stream",  # older llama.cpp
    "support tool use",  # OpenRouter: "No endpoints found that support tool use"
)
# Servers outside the OpenAI vocabulary (TGI and friends) name the same two endings differently;
# `function_call` is the legacy name of `tool_calls`.
_FINISH_ALIASES = {"eos_token": "stop", "stop_sequence": "stop", "max_tokens": "length", "function_call": "tool_calls"}


# --- error classification ------------------------------------------------------------------------


def classify_error(
    status: int | None, body: object, *, default: ProviderErrorKind, tools: bool = False
) -> ProviderErrorKind:
    """The kind for an error answer: `body` is parsed JSON or plain text, `status` None in-stream,
    `tools` whether the request offered tools."""
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
    if tools and status >= 400 and any(marker in text for marker in _TOOLS_REFUSALS):
        return Kind.TOOLS_UNSUPPORTED
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
    """A count from the server: an int, never below zero (a negative count would lower a bill)."""
    return max(value, 0) if type(value) is int else 0


# --- stream translation (pure) -------------------------------------------------------------------


class _ToolCall:
    """A call being streamed: its fragments gather here until the stream ends."""

    __slots__ = ("arguments", "call_id", "index", "name", "ordinal", "wire_id")

    def __init__(self, index: int, ordinal: int) -> None:
        self.index = index  # the server's index (Ollama gives every call 0)
        self.ordinal = ordinal  # its place among the reply's calls
        self.wire_id = ""  # the id the server sent, if any
        self.call_id = ""  # the id announced in ToolCallStarted
        self.name = ""
        self.arguments: list[str] = []


class OpenAIStreamTranslator:
    """Chat-completion chunks in, provider events out; one instance per upstream response.

    Tool calls arrive as `delta.tool_calls` fragments gathered by `index`: vLLM sends the id and
    name on the first fragment only, llama-cpp-python repeats them on every one (beside a legacy
    `function_call` copy, ignored), Ollama sends each call whole, every one at index 0 (a new id
    at a known index is a new call), some servers leave out `index` (the fragment's place in the
    list stands in) or send `arguments` as an object. A call is announced when its name is known
    and handed over complete at the end of the stream, in index order.
    """

    __slots__ = (
        "_calls",
        "_calls_at",
        "_output_chunks",
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
        self._output_chunks = 0  # chunks with text, reasoning or a call's fragment: ~ tokens
        self._calls: list[_ToolCall] = []
        self._calls_at: dict[int, _ToolCall] = {}  # the latest call at each wire index
        self._template: tuple[str, str] | None = None  # see feed
        self._templates_tried = 0
        self.done = False  # `[DONE]` was seen: stop reading
        self.saw_chunk = False  # at least one JSON chunk arrived
        self.finish_reason: str | None = None

    def feed(self, events: Sequence[ServerSentEvent], out: list[ProviderEvent]) -> None:
        """Translate a read's SSE events into `out`; raises ProviderError for in-stream errors,
        after the events that came before them.

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
                        self._output_chunks += 1
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
        """End of stream: a `ToolCallReady` per call, `Usage`, `Finished`; a TRUNCATED error when no
        finish reason came, a STREAM error for a call that never got a name."""
        if self.finish_reason is None:
            raise self.error(Kind.TRUNCATED)
        out: list[ProviderEvent] = []
        for call in sorted(self._calls, key=lambda c: c.index):  # stable: Ollama's 0s keep their order
            if not call.name:
                logger.warning("model server streamed a tool call without a name (index %d)", call.index)
                raise self.error(Kind.STREAM)
            out.append(
                ToolCallReady(call_id=call.call_id, name=call.name, arguments=finished_arguments(call.arguments))
            )
        usage = self.partial_usage()
        assert usage is not None  # a finish reason implies a chunk
        reason = self.finish_reason
        return [*out, usage, Finished(reason=_FINISH_ALIASES.get(reason, reason))]

    def partial_usage(self) -> Usage | None:
        """Usage so far: the server's latest counts, else an estimate; None before any chunk."""
        if not self.saw_chunk:
            return None
        if self._usage is not None:
            prompt, completion, cached = self._usage
            return Usage(input_tokens=max(0, prompt - cached), output_tokens=completion, cache_read_tokens=cached)
        return Usage(
            input_tokens=estimate_tokens(self._prompt_chars),
            output_tokens=self._output_chunks,
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
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        content = delta.get("content")
        calls = delta.get("tool_calls")
        # llama-cpp-python sends a legacy `function_call` copy beside `tool_calls`; alone, it is
        # the one call of an older server.
        if not calls and (legacy := delta.get("function_call")):
            calls = [{"index": 0, "function": legacy}]
        if not reasoning and not content and not calls:
            return
        self._output_chunks += 1
        if reasoning and type(reasoning) is str:
            add_reasoning(out, reasoning)
        if content and type(content) is str:
            if self._think.passthrough:
                add_text(out, content)
            else:
                self._pieces(*self._think.feed(content), out)
        elif type(content) is list:
            self._content_parts(content, out)
        elif content:
            logger.warning("model server sent content of type %s; dropped", type(content).__name__)
            raise self.error(Kind.STREAM)
        if calls:
            self._take_calls(calls, out)

    def _take_calls(self, fragments: object, out: list[ProviderEvent]) -> None:
        """Gather one chunk's call fragments; announce each call once its name is known."""
        if type(fragments) is not list:
            raise self._odd_call(fragments)
        for position, fragment in enumerate(fragments):
            if type(fragment) is not dict:
                raise self._odd_call(fragment)
            function = fragment.get("function") or {}
            if type(function) is not dict or type(function.get("arguments")) not in _ARGUMENT_TYPES:
                raise self._odd_call(fragment)
            index = fragment.get("index")
            if type(index) is not int:
                index = position
            wire_id = fragment.get("id")
            wire_id = wire_id if type(wire_id) is str else ""
            call = self._calls_at.get(index)
            if call is None or (wire_id and call.wire_id and wire_id != call.wire_id):
                call = self._calls_at[index] = _ToolCall(index, len(self._calls))
                self._calls.append(call)
            if wire_id and not call.wire_id:
                call.wire_id = wire_id
            name = function.get("name")
            if name and type(name) is str and not call.name:  # repeated names are copies
                call.name = name
                call.call_id = call.wire_id or generated_call_id(call.ordinal)
                out.append(ToolCallStarted(call_id=call.call_id, name=name))
            arguments = function.get("arguments")
            if type(arguments) is str:
                call.arguments.append(arguments)
            elif arguments is not None:  # an object the server parsed already
                call.arguments.append(arguments_json(arguments))

    def _odd_call(self, fragment: object) -> StreamFailedError:
        logger.warning("model server sent a tool call of an unknown shape: %.300r", fragment)
        return self.error(Kind.STREAM)

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


# A call's arguments: text, an object some servers parse first, or none in this fragment.
_ARGUMENT_TYPES = (str, dict, type(None))
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


def build_request(
    messages: Sequence[ChatMessage],
    model: str,
    max_tokens: int | None,
    tools: Sequence[ToolSpec] = (),
    tool_choice: ToolChoice = "auto",
) -> dict[str, Any]:
    """The streaming body. Raises ProviderError(BAD_REQUEST) for a misplaced tool part or a forced
    tool that is not offered.

    With tools offered, calls go out as the assistant's `tool_calls` (its `content` "" when it
    wrote none: llama-cpp-python answers null with HTTP 500) and results as one `tool` message
    each, an error's text prefixed so the model knows it failed. Without tools they go as text,
    the results in a user message that the next user message joins (many chat templates require
    the roles to alternate). `tool_choice` "none" sends no `tools` at all (some servers refuse the
    field, and the model must not call); the calls in the history stay as they are, which this
    wire allows. An empty `tools` array is never sent. Reasoning is never sent back.
    """
    check_tool_choice(tools, tool_choice)
    wire: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call id -> tool name, for results written as text
    results_as_text: dict[str, Any] | None = None
    for message in messages:
        calls, results = tool_parts(message)
        if message.role == "tool":
            if tools:
                wire += [
                    {
                        "role": "tool",
                        "tool_call_id": r.call_id,
                        "content": f"Error: {result_output(r)}" if r.is_error else result_output(r),
                    }
                    for r in results
                ]
            elif results:
                results_as_text = {"role": "user", "content": "\n".join(result_as_text(r, names) for r in results)}
                wire.append(results_as_text)
            continue
        content = message.plain_text
        if message.role == "user" and results_as_text is not None and wire[-1] is results_as_text:
            results_as_text["content"] += "\n\n" + content
            continue
        entry: dict[str, Any] = {"role": message.role, "content": content}
        if calls:
            names.update((call.call_id, call.name) for call in calls)
            if tools:
                entry["tool_calls"] = [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": arguments_json(call.arguments)},
                    }
                    for call in calls
                ]
            else:
                entry["content"] = "\n".join([*([content] if content else []), *map(call_as_text, calls)])
        wire.append(entry)
    body: dict[str, Any] = {
        "model": model,
        "messages": wire,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if tools and tool_choice != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": grammar_safe_schema(t.input_schema),
                },
            }
            for t in tools
        ]
        body["tool_choice"] = (
            {"type": "function", "function": {"name": tool_choice.name}}
            if isinstance(tool_choice, ForcedTool)
            else "auto"
        )
    return body


def prompt_chars(body: dict[str, Any]) -> int:
    """The characters of a request's prompt (messages, replayed calls, tool definitions), for an
    estimate when the server counts no tokens."""
    chars = 0
    for message in body["messages"]:
        chars += len(message["content"])
        for call in message.get("tool_calls", ()):
            chars += len(call["function"]["arguments"])
    if "tools" in body:
        chars += len(orjson.dumps(body["tools"]))
    return chars
