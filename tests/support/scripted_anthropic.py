"""A scripted Anthropic-dialect server (`POST /v1/messages`) on loopback, for faults on demand.

It is `ScriptedUpstream` (same thread, sockets, scripts, request recording and close detection)
answering Anthropic's route instead of `/v1/chat/completions`; `message_stream` builds the
streams it plays (`tool_use_stream` one in which the model calls tools):

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

__all__ = ["ScriptedAnthropic", "error_body", "event", "message_stream", "scripted_tool_use_id", "tool_use_stream"]


def event(name: str, data: Mapping[str, Any]) -> bytes:
    """One SSE event the way Anthropic frames it: an `event:` line, a `data:` line, a blank line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_body(etype: str = "overloaded_error", message: str = "Overloaded") -> dict[str, Any]:
    """Anthropic's error body (HTTP answers and in-stream `error` events share it)."""
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_scripted"}


def scripted_tool_use_id(index: int) -> str:
    """The id `message_stream` gives its `index`-th tool_use block."""
    return f"toolu_scripted_{index}"


def message_stream(
    texts: Sequence[str] = ("Hello", " world"),
    *,
    thinking: Sequence[str] = (),
    tool_uses: Sequence[tuple[str, str]] = (),
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
    """A Messages stream: thinking block, text block, a tool_use block per `(name, input JSON)` in
    `tool_uses` (its input streamed in two pieces), then the finish (or an `error` event).

    Each SSE event is its own chunk, so `delay` paces events. `error` is an error type sent after
    the blocks (the stream then ends without message_stop, as Anthropic's does); `finish=False`
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

    def block(index: int, start: dict[str, Any], deltas_of: Sequence[dict[str, Any]], *, close: bool) -> None:
        nonlocal deltas
        chunks.append(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        for delta in deltas_of:
            chunks.append(event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            deltas += 1
            if ping_every and deltas % ping_every == 0:
                chunks.append(event("ping", {"type": "ping"}))
        if close:
            chunks.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))

    index = 0
    if thinking:
        signature = {"type": "signature_delta", "signature": "c2NyaXB0ZWQ="}
        block(
            index,
            {"type": "thinking", "thinking": ""},
            [*({"type": "thinking_delta", "thinking": t} for t in thinking), signature],
            close=True,
        )
        index += 1
    if texts or (error is None and not tool_uses):
        # The last block is left open when the stream breaks off after it.
        close = bool(tool_uses) or (finish and error is None)
        block(index, {"type": "text", "text": ""}, [{"type": "text_delta", "text": t} for t in texts], close=close)
        index += 1
    for i, (name, arguments) in enumerate(tool_uses):
        start = {"type": "tool_use", "id": scripted_tool_use_id(i), "name": name, "input": {}}
        half = len(arguments) // 2
        pieces = [{"type": "input_json_delta", "partial_json": p} for p in ("", arguments[:half], arguments[half:])]
        block(index, start, pieces, close=True)
        index += 1
    if error is not None:
        chunks.append(event("error", error_body(error, "scripted " + error)))
    elif finish:
        out = output_tokens if output_tokens is not None else len(texts) + len(thinking) + len(tool_uses)
        chunks.append(
            event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": out}},
            )
        )
        chunks.append(event("message_stop", {"type": "message_stop"}))
    return Stream(chunks=chunks, delay=delay, first_delay=first_delay, end=end)


def tool_use_stream(
    tool_uses: Sequence[tuple[str, str]], text: str = "", *, stop_reason: str = "tool_use", **kwargs: Any
) -> Stream:
    """A Messages stream in which the model writes `text`, then calls each `(name, input JSON)`;
    the other arguments are `message_stream`'s. Ids are `scripted_tool_use_id`'s."""
    return message_stream([text] if text else [], tool_uses=tool_uses, stop_reason=stop_reason, **kwargs)


class ScriptedAnthropic(ScriptedUpstream):
    """`ScriptedUpstream` on Anthropic's route; `base_url` is the bare origin, as the SDK's is.
    GET /v1/models lists the model (or answers `models_reply`), and is recorded."""

    def __init__(self, *, default: Script | None = None) -> None:
        super().__init__(model="claude-scripted", default=default if default is not None else message_stream())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, request: RecordedRequest, conn: _Connection) -> bool:
        if request.method == "GET" and request.path == "/v1/models":
            with self._lock:
                self._requests.append(request)
            models = {"data": [{"type": "model", "id": self.model}], "has_more": False}
            return await self._reply(self.models_reply or Reply(200, models), request, conn)
        if request.method != "POST" or request.path != "/v1/messages":
            return await self._reply(Reply(404, error_body("not_found_error", "Not Found")), request, conn)
        return await self._record_and_play(request, conn)
