"""What the provider tests share: the backoff seam, stream helpers, a free port."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.errors import ProviderError
from parley.providers.base import ChatMessage, Provider, ProviderEvent, TextDelta
from tests.support.events import spelled_out

HELLO = [ChatMessage.text("user", "hello")]


class Sleeps:
    """The backoff seam: records requested delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def collect(
    provider: Provider, messages: list[ChatMessage] = HELLO, *, model: str, **kwargs: Any
) -> list[ProviderEvent]:
    # One event per piece: a read's pieces come as one run, and how reads split them varies.
    return spelled_out([event async for batch in provider.stream(messages, model=model, **kwargs) for event in batch])


async def failing(
    provider: Provider, messages: list[ChatMessage] = HELLO, *, model: str, **kwargs: Any
) -> tuple[list[ProviderEvent], ProviderError]:
    """The events before the stream failed, and the error; fails the test if it did not fail."""
    events: list[ProviderEvent] = []
    try:
        async for batch in provider.stream(messages, model=model, **kwargs):
            assert batch, "a provider yields no empty batch"
            events.extend(batch)
    except ProviderError as exc:
        return spelled_out(events), exc
    raise AssertionError(f"the stream did not fail: {events}")


def texts(events: list[ProviderEvent]) -> str:
    return "".join(text for e in events if isinstance(e, TextDelta) for text in e.texts)
