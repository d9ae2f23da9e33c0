"""A scripted Anthropic-dialect server (`POST /v1/messages`) on loopback, for faults on demand.

It is `ScriptedUpstream` (same thread, sockets, scripts, request recording and close detection)
answering Anthropic's route instead of `/v1/chat/completions`; `message_stream` builds the
streams it plays:

    with ScriptedAnthropic() as server:
        server.enqueue(Reply(529, overloaded()), message_stream(["Hello", " there"]))
        provider = AnthropicProvider(api_key="k", base_url=server.base_url)
        ...
        assert server.requests[-1].headers["x-api-key"] == "k"

Scripts: `Reply`, `Stream` (usually from `message_stream`), `Stall`, `Refuse` from
tests/support/scripted_upstream.py. Any other route answers a 404 `not_found_error`.

Imports: standard library, orjson, tests.support.scripted_upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from tests.support.scripted_upstream import (
    End,
    RecordedRequest,
    Reply,
    Script,
    ScriptedUpstream,
    Stream,
    _Connection,
)

__all__ = ["ScriptedAnthropic", "error_body", "event", "message_stream"]


def event(name: str, data: Mapping[str, Any]) -> bytes:
    """One SSE event the way Anthropic frames it: an `event:` line, a `data:` line, a blank line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_body(etype: str = "overloaded_error", message: str = "Overloaded") -> dict[str, Any]:
    """Anthropic's error body (HTTP answers and in-stream `error` events share it)."""
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_scripted"}


def message_stream(
    texts: Sequence[str] = ("Hello", " world"),
    *,
    thinking: Sequence[str] = (),
    input_tokens: int = 12,
    cache_read: int = 0,
    cache_write: int = 0,
    output_tokens: int | None = None,
    stop_reason: str = "end_turn",
    error: str | None = None,
    finish: bool = True,
    ping_every: int = 0,
    delay: float = 0.0,
    first_delay: float = 0.0,
    end: End = "close",
    model: str = "claude-scripted",
) -> Stream:
    """A Messages stream: thinking block, text block, then the finish (or an `error` event).

    Each SSE event is its own chunk, so `delay` paces events. `error` is an error type sent after
    the texts (the stream then ends without message_stop, as Anthropic's does); `finish=False`
    leaves out message_delta and message_stop; `ping_every` puts a ping after every n-th delta.
    """
    usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": 1,
    }
    message = {"id": "msg_scripted", "type": "message", "role": "assistant", "model": model, "content": []}
    chunks = [event("message_start", {"type": "message_start", "message": {**message, "usage": usage}})]
    deltas = 0

    def block(index: int, kind: str, pieces: Sequence[str]) -> None:
        nonlocal deltas
        start: dict[str, Any] = {"type": kind, kind: ""}
        chunks.append(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        for piece in pieces:
            delta = {"type": f"{kind}_delta", kind: piece}
            chunks.append(event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            deltas += 1
            if ping_every and deltas % ping_every == 0:
                chunks.append(event("ping", {"type": "ping"}))
        if kind == "thinking":
            signature = {"type": "signature_delta", "signature": "c2NyaXB0ZWQ="}
            chunks.append(
                event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": signature})
            )

    index = 0
    if thinking:
        block(index, "thinking", thinking)
        index += 1
    if texts or error is None:
        block(index, "text", texts)
    if error is not None:
        chunks.append(event("error", error_body(error, "scripted " + error)))
    elif finish:
        out = output_tokens if output_tokens is not None else len(texts) + len(thinking)
        chunks.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        chunks.append(
            event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": out}},
            )
        )
        chunks.append(event("message_stop", {"type": "message_stop"}))
    return Stream(chunks=chunks, delay=delay, first_delay=first_delay, end=end)


class ScriptedAnthropic(ScriptedUpstream):
    """`ScriptedUpstream` on Anthropic's route; `base_url` is the bare origin, as the SDK's is."""

    def __init__(self, *, default: Script | None = None) -> None:
        super().__init__(model="claude-scripted", default=default if default is not None else message_stream())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, request: RecordedRequest, conn: _Connection) -> bool:
        if request.method != "POST" or request.path != "/v1/messages":
            return await self._reply(Reply(404, error_body("not_found_error", "Not Found")), request, conn)
        return await self._record_and_play(request, conn)
