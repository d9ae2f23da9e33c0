"""Provider events as the tests compare them: runs of pieces spelled out, one event per call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parley.providers.base import (
    Finished,
    ProviderEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallReady,
    ToolCallStarted,
    Usage,
)
from parley.providers.http import StreamTranslator
from parley.providers.sse import ServerSentEvent


def spelled_out(events: Sequence[ProviderEvent]) -> list[ProviderEvent]:
    """The events with every run of pieces as one event per piece (how a read split them varies)."""
    out: list[ProviderEvent] = []
    for event in events:
        if isinstance(event, TextDelta | ReasoningDelta):
            out += [type(event)([text]) for text in event.texts]
        else:
            out.append(event)
    return out


def feed_one(translator: StreamTranslator, sse: ServerSentEvent) -> list[ProviderEvent]:
    """What one SSE event translates to, spelled out."""
    out: list[ProviderEvent] = []
    translator.feed([sse], out)
    return spelled_out(out)


def from_fixture(spec: dict[str, Any]) -> ProviderEvent:
    """A provider event as a golden transcript's expectations write it (`{"type": ..., ...}`);
    a delta there is one piece (`"text"`)."""
    fields = dict(spec)
    kind = fields.pop("type")
    if kind in ("text_delta", "reasoning_delta"):
        return (TextDelta if kind == "text_delta" else ReasoningDelta)([fields["text"]])
    kinds = {
        "usage": Usage,
        "finished": Finished,
        "tool_call_started": ToolCallStarted,
        "tool_call_ready": ToolCallReady,
    }
    return kinds[kind](**fields)
