"""A real `Provider` that plays scripted replies in-process (no HTTP).

For turn-logic tests where the wire format does not matter (Stop, timeouts, eviction, leases).
Wire-level faults are tested with the scripted upstream server instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from parley.errors import ProviderError
from parley.providers.base import ChatMessage, Finished, ProviderEvent, ReasoningDelta, TextDelta, Usage


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


class ScriptedProvider:
    name = "scripted"

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self.replies: deque[Reply] = deque()
        self.calls: list[list[ChatMessage]] = []
        self.max_tokens: list[int | None] = []
        self.opened = 0
        self.closed = 0
        self.closed_event = asyncio.Event()

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def stream(
        self, messages: Sequence[ChatMessage], *, model: str, max_tokens: int | None = None
    ) -> AsyncIterator[Sequence[ProviderEvent]]:
        reply = self.replies.popleft() if self.replies else self.default
        self.calls.append(list(messages))
        self.max_tokens.append(max_tokens)
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
            if reply.usage is not None:
                yield (reply.usage,)
            if reply.finish is not None:
                yield (Finished(reason=reply.finish),)
            else:
                raise ProviderError(__import__("parley.errors").errors.ProviderErrorKind.TRUNCATED)
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        return None
