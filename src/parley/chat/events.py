"""The closed set of events a turn publishes, and their SSE wire encoding.

Wire contract (camelCase payloads; `data` is the whole event object including `type`):

    message_start{messageId}  content_delta{delta}  reasoning_delta{delta}
    message_end{inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens, costUsd, usageEstimated}
    title_updated{title}  error{code, message}  done{}
    stream_gap{afterId, nextId}: frames between the two ids were lost in transit (they are stored)

Each frame carries `id: <stream>-<seq>`: the number of the session's event stream (a turn, or its
continuation; numbered by the database) and the frame's position in it, so `Last-Event-ID` can
resume a running turn on any process. It is also the frame's entry id in Redis. A delta event
carries the pieces of one network read and goes out as one frame per piece. Imports only the
standard library and orjson.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, assert_never

import orjson


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageStart:
    """The assistant message began; `message_id` is the id it will be stored under."""

    type: Literal["message_start"] = "message_start"
    message_id: str


@dataclass(slots=True)
class ContentDelta:
    """Pieces of the answer, one frame (`content_delta{delta}`) each: a network read's run of them."""

    type: ClassVar[Literal["content_delta"]] = "content_delta"
    texts: list[str]


@dataclass(slots=True)
class ReasoningDelta:
    """Pieces of the model's reasoning, shown apart from the answer (as ContentDelta)."""

    type: ClassVar[Literal["reasoning_delta"]] = "reasoning_delta"
    texts: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEnd:
    """The reply completed; usage and cost of the turn."""

    type: Literal["message_end"] = "message_end"
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: str | None = None  # decimal string: exact, never a float
    usage_estimated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TitleUpdated:
    """The session got a title (from its first message)."""

    type: Literal["title_updated"] = "title_updated"
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnError:
    """The turn failed or the session ended; `message` is safe to show a user."""

    type: Literal["error"] = "error"
    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The turn is over; nothing more will be published for it."""

    type: Literal["done"] = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamGap:
    """Frames between two ids never reached this reader (a relay failed); the reply is stored whole."""

    type: Literal["stream_gap"] = "stream_gap"
    after_id: str
    next_id: str


StreamEvent = MessageStart | ContentDelta | ReasoningDelta | MessageEnd | TitleUpdated | TurnError | Done | StreamGap


def encode(event: StreamEvent, turn: int, seq: int) -> list[bytes]:
    """The SSE frames of `event`, with ids `<turn>.<seq>`, `<turn>.<seq + 1>`, ...: one per piece of
    a delta, one for any other event. Payload JSON never holds a raw newline, so one `data:` line
    suffices. Deltas run once per token: their frames are made from the encoded text alone."""
    if type(event) is ContentDelta or type(event) is ReasoningDelta:
        head = _DELTA_HEADS[event.type]
        dumps = orjson.dumps
        return [b"id: %d-%d%b%b}\n\n" % (turn, i, head, dumps(text)) for i, text in enumerate(event.texts, seq)]
    return [b"id: %d-%d\nevent: %b\ndata: %b\n\n" % (turn, seq, event.type.encode(), orjson.dumps(_payload(event)))]


_DELTA_HEADS = {
    kind: b'\nevent: %b\ndata: {"type":"%b","delta":' % (kind.encode(), kind.encode())
    for kind in ("content_delta", "reasoning_delta")
}


def _payload(event: StreamEvent) -> dict[str, object]:
    """The JSON object sent as `data:` of an event that is not a delta."""
    match event:
        case MessageStart(message_id=mid):
            return {"type": event.type, "messageId": mid}
        case MessageEnd():
            return {
                "type": event.type,
                "inputTokens": event.input_tokens,
                "outputTokens": event.output_tokens,
                "cacheReadTokens": event.cache_read_tokens,
                "cacheWriteTokens": event.cache_write_tokens,
                "costUsd": event.cost_usd,
                "usageEstimated": event.usage_estimated,
            }
        case TitleUpdated(title=t):
            return {"type": event.type, "title": t}
        case TurnError(code=c, message=m):
            return {"type": event.type, "code": c, "message": m}
        case Done():
            return {"type": event.type}
        case StreamGap(after_id=a, next_id=n):
            return {"type": event.type, "afterId": a, "nextId": n}
        case ContentDelta() | ReasoningDelta():
            raise ValueError("deltas are encoded piece by piece")
        case _:
            assert_never(event)


HEARTBEAT_FRAME = b": ping\n\n"


def is_done_frame(frame: bytes) -> bool:
    """Whether an encoded frame is the `done` that ends its stream."""
    return b"\nevent: done\n" in frame
