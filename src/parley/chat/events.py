"""The closed set of events a turn publishes, and their SSE wire encoding.

Wire contract (camelCase payloads; `data` is the whole event object including `type`):

    message_start{messageId}  content_delta{delta}  reasoning_delta{delta}
    message_end{inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens, costUsd, usageEstimated}
    title_updated{title}  error{code, message}  done{}

Each frame carries `id: <turn>.<seq>`: the session's turn number and the event's position in that
turn, so `Last-Event-ID` can resume a running turn. Imports only the standard library and orjson.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, assert_never

import orjson


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageStart:
    """The assistant message began; `message_id` is the id it will be stored under."""

    type: Literal["message_start"] = "message_start"
    message_id: str


@dataclass(slots=True, kw_only=True)
class ContentDelta:
    """A piece of the answer."""

    # Created once per token: not frozen and `type` on the class, because a frozen dataclass's
    # __init__ sets each field through object.__setattr__ (about 3x the cost of a plain one).
    type: ClassVar[Literal["content_delta"]] = "content_delta"
    delta: str


@dataclass(slots=True, kw_only=True)
class ReasoningDelta:
    """A piece of the model's reasoning, shown apart from the answer (once per token, like ContentDelta)."""

    type: ClassVar[Literal["reasoning_delta"]] = "reasoning_delta"
    delta: str


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


StreamEvent = MessageStart | ContentDelta | ReasoningDelta | MessageEnd | TitleUpdated | TurnError | Done


def payload(event: StreamEvent) -> dict[str, object]:
    """The JSON object sent as `data:` (and returned by the replay API)."""
    match event:
        case ContentDelta(delta=d) | ReasoningDelta(delta=d):
            return {"type": event.type, "delta": d}
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
        case _:
            assert_never(event)


_DELTA_HEADS = {
    ContentDelta: b'\nevent: content_delta\ndata: {"type":"content_delta","delta":',
    ReasoningDelta: b'\nevent: reasoning_delta\ndata: {"type":"reasoning_delta","delta":',
}


def encode_frame(event: StreamEvent, event_id: str) -> bytes:
    """One SSE frame. Payload JSON never contains a raw newline, so one `data:` line suffices.

    Deltas (one per token) skip the payload dict: the same bytes orjson would make of it, from
    the encoded delta string alone.
    """
    head = _DELTA_HEADS.get(type(event))
    if head is not None:
        delta: str = event.delta  # type: ignore[union-attr]
        return b"".join((b"id: ", event_id.encode(), head, orjson.dumps(delta), b"}\n\n"))
    return b"".join(
        (
            b"id: ",
            event_id.encode(),
            b"\nevent: ",
            event.type.encode(),
            b"\ndata: ",
            orjson.dumps(payload(event)),
            b"\n\n",
        )
    )


def encode_content_frames(texts: Sequence[str], turn: int, seq: int) -> list[bytes]:
    """The frames of `ContentDelta`s with these texts, ids `<turn>.<seq>`, `<turn>.<seq + 1>`, ...

    The same bytes as `encode_frame` one by one; runs once per network read with its tokens, so
    it starts from the text alone (no event object per token).
    """
    return _delta_frames(_DELTA_HEADS[ContentDelta], texts, turn, seq)


def encode_reasoning_frames(texts: Sequence[str], turn: int, seq: int) -> list[bytes]:
    """As `encode_content_frames`, for `ReasoningDelta`s."""
    return _delta_frames(_DELTA_HEADS[ReasoningDelta], texts, turn, seq)


def _delta_frames(head: bytes, texts: Sequence[str], turn: int, seq: int) -> list[bytes]:
    dumps = orjson.dumps
    return [b"id: %d.%d%b%b}\n\n" % (turn, i, head, dumps(text)) for i, text in enumerate(texts, seq)]


HEARTBEAT_FRAME = b": ping\n\n"
