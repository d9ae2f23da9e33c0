"""A real `Provider` that plays scripted replies in-process (no HTTP).

For turn-logic tests where the wire format does not matter (Stop, timeouts, eviction, leases).
Wire-level faults are tested with the scripted upstream server instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    ContextWindow,
    Finished,
    ProviderEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
    ToolChoice,
    ToolSpec,
    Usage,
)


@dataclass
class Reply:
    tokens: Sequence[str] = ("Hello", " there", "!")
    reasoning: Sequence[str] = ()
    first_delay: float = 0.0
    delay: float = 0.0
    usage: Usage | None = field(default_factory=lambda: Usage(input_tokens=10, output_tokens=3))
    finish: str | None = "stop"
    fail_after: int | None = None  # raise `error` after this many tokens
    per_read: int = 1  # tokens yielded together, as one network read would bring them
    error: ProviderError | None = None
    # Tool calls made after the text: (name, arguments as a dict, or the raw JSON text the model wrote).
    calls: Sequence[tuple[str, dict[str, Any] | str]] = ()


def tool_call(name: str, arguments: dict[str, Any] | str | None = None, *, text: Sequence[str] = ()) -> Reply:
    """A reply that calls one tool (after some text, if given)."""
    return Reply(tokens=text, calls=[(name, arguments if arguments is not None else {})], finish="tool_calls")


# A reply worked out from what the model was sent (say, an answer that quotes a tool's result).
Script = Reply | Callable[[list[ChatMessage]], Reply]


class ScriptedProvider:
    name = "scripted"

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self.replies: deque[Script] = deque()
        self.calls: list[list[ChatMessage]] = []
        self.max_tokens: list[int | None] = []
        self.tools: list[list[ToolSpec]] = []  # the tools offered, per request
        self.window: ContextWindow | None = None  # what it says of its context window
        self.choices: list[ToolChoice] = []
        self.opened = 0
        self.closed = 0
        self.closed_event = asyncio.Event()
        self.unreachable: str | None = None  # what probe() answers (None: the server is up)
        self.probes = 0

    def enqueue(self, *replies: Script) -> None:
        self.replies.extend(replies)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[Sequence[ProviderEvent]]:
        script = self.replies.popleft() if self.replies else self.default
        reply = script if isinstance(script, Reply) else script(list(messages))
        self.calls.append(list(messages))
        self.max_tokens.append(max_tokens)
        self.tools.append(list(tools))
        self.choices.append(tool_choice)
        self.opened += 1
        try:
            if reply.first_delay:
                await asyncio.sleep(reply.first_delay)
            for text in reply.reasoning:
                yield (ReasoningDelta([text]),)
            tokens = list(reply.tokens if reply.fail_after is None else reply.tokens[: reply.fail_after])
            for i in range(0, len(tokens), reply.per_read):
                if i and reply.delay:
                    await asyncio.sleep(reply.delay)
                yield (TextDelta(tokens[i : i + reply.per_read]),)  # a read's pieces travel as one run
            if reply.error is not None:
                raise reply.error
            for i, (name, arguments) in enumerate(reply.calls):
                call_id = f"call_{self.opened}_{i}"
                raw = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
                yield (
                    ToolCallStarted(call_id=call_id, name=name),
                    ToolCallReady(call_id=call_id, name=name, arguments=raw),
                )
            if reply.usage is not None:
                yield (reply.usage,)
            if reply.finish is not None:
                yield (Finished(reason=reply.finish),)
            else:
                raise ProviderError(ProviderErrorKind.TRUNCATED)
        finally:
            self.closed += 1

    async def context_window(self, model: str) -> ContextWindow | None:
        return self.window

    async def count_tokens(self, model: str, text: str) -> int | None:
        return None

    async def probe(self) -> str | None:
        self.probes += 1
        return self.unreachable

    async def aclose(self) -> None:
        return None
