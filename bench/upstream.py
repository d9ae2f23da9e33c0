"""A synthetic OpenAI-compatible model server for benchmarks, in its own process.

It must cost far less CPU than whatever it feeds, so it is a bare `asyncio.Protocol` (on uvloop
when installed): no streams, no tasks per connection, no JSON parsing of requests. Every reply of
the current shape is pre-encoded once (chunked HTTP/1.1 framing included); a paced reply is a
chain of `call_at` timers that writes, at start + first_delay + i * delay, every frame that is due
(a late timer writes all the overdue frames at once, so the rate holds under load).

    python -m bench.upstream [--port 0] [--tokens 256] [--delay 0] [--first-delay 0] [--no-usage]

prints `PORT <n>` once listening. Routes:
    POST …/chat/completions   the reply (`"stream": false` gets a plain completion)
    POST /control             JSON {tokens, delay, first_delay, usage, hold}: the shape from now on
    POST /release             held streams (shape `hold`) go on
    GET  /stats               {replies, open}: replies so far, streams being written now
    GET  …/models             one model

Loopback only. Imports: standard library, orjson, uvloop (optional).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
from dataclasses import dataclass
from typing import cast

import orjson

MODEL = "bench-model"
CREATED = 1_700_000_000
_HEAD_STREAM = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class Shape:
    """What every reply looks like until the next /control."""

    tokens: int = 256
    delay: float = 0.0  # seconds between tokens
    first_delay: float = 0.0  # seconds between the headers and the first token
    usage: bool = True
    hold: bool = False  # after the first token, wait for POST /release (memory with many open streams)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _event(delta: dict[str, object], finish: str | None = None) -> bytes:
    obj = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class Encoded:
    """A shape's pre-encoded pieces: `frames[0]` goes with the headers, then one per token, then the tail."""

    __slots__ = ("completion", "frames", "shape", "whole")

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        role = _chunk(_event({"role": "assistant", "content": ""}))
        tokens = [_chunk(_event({"content": f" w{i % 100}"})) for i in range(shape.tokens)]
        tail = _event({}, "stop")
        if shape.usage:
            usage = {"prompt_tokens": 20, "completion_tokens": shape.tokens, "total_tokens": 20 + shape.tokens}
            tail += b"data: " + orjson.dumps({"id": "chatcmpl-bench", "choices": [], "usage": usage}) + b"\n\n"
        tail += b"data: [DONE]\n\n"
        self.frames = [_HEAD_STREAM + role, *tokens, _chunk(tail) + b"0\r\n\r\n"]
        self.whole = b"".join(self.frames)
        body = orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": CREATED,
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "w"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
            }
        )
        self.completion = _plain(200, body)


def _plain(status: int, body: bytes) -> bytes:
    reason = {200: b"OK", 404: b"Not Found"}.get(status, b"Status")
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        status,
        reason,
        len(body),
        body,
    )


class State:
    """The current shape, shared by every connection."""

    def __init__(self, shape: Shape) -> None:
        self.encoded = Encoded(shape)
        self.replies = 0
        self.open_streams = 0
        self.held: set[UpstreamProtocol] = set()


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests are answered one at a time, in order."""

    __slots__ = ("_buf", "_busy", "_handle", "_held", "_loop", "_state", "_transport")

    def __init__(self, state: State) -> None:
        self._state = state
        self._buf = b""
        self._busy = False
        self._transport: asyncio.Transport | None = None
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._held: tuple[Encoded, int] | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.held.discard(self)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._state.open_streams -= 1
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next_request()

    def _next_request(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = buf[:end].lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else len(head)].strip())
        if len(buf) < end + 4 + length:
            return  # the body is not all here yet
        body = buf[end + 4 : end + 4 + length]
        self._buf = buf[end + 4 + length :]
        first_line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        method, _, rest = first_line.partition(b" ")
        path = rest.partition(b" ")[0]
        self._answer(method, path, body)

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if method == b"post" and path.endswith(b"/chat/completions"):
            self._reply(body)
        elif method == b"post" and path == b"/control":
            shape = Shape(**orjson.loads(body))
            self._state.encoded = Encoded(shape)
            transport.write(_plain(200, orjson.dumps({"ok": True, "replies": self._state.replies})))
        elif method == b"post" and path == b"/release":
            held, self._state.held = self._state.held, set()
            for proto in held:
                proto.release()
            transport.write(_plain(200, orjson.dumps({"released": len(held)})))
        elif method == b"get" and path.endswith(b"/models"):
            transport.write(_plain(200, orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})))
        elif method == b"get" and path == b"/stats":
            state = self._state
            transport.write(_plain(200, orjson.dumps({"replies": state.replies, "open": state.open_streams})))
        else:
            transport.write(_plain(404, b'{"error":{"message":"no such route"}}'))
        if not self._busy and self._buf:
            self._next_request()

    def _reply(self, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        state = self._state
        state.replies += 1
        encoded = state.encoded
        if b'"stream":false' in body or b'"stream": false' in body:
            transport.write(encoded.completion)
            return
        shape = encoded.shape
        if not shape.delay and not shape.first_delay:
            transport.write(encoded.whole)  # unpaced: one write, least CPU
            return
        transport.write(encoded.frames[0])
        self._busy = True
        state.open_streams += 1
        start = self._loop.time() + shape.first_delay
        self._handle = self._loop.call_at(start, self._tick, encoded, start, 1)

    def release(self) -> None:
        """Go on with a held stream, paced from now."""
        if self._held is None:
            return
        encoded, sent = self._held
        self._held = None
        start = self._loop.time() - (sent - 1) * encoded.shape.delay
        self._handle = self._loop.call_soon(self._tick, encoded, start, sent)

    def _tick(self, encoded: Encoded, start: float, sent: int) -> None:
        transport = self._transport
        if transport is None:
            return
        frames = encoded.frames
        delay = encoded.shape.delay
        total = len(frames)
        now = self._loop.time()
        due = total if not delay else min(total, 1 + int((now - start) / delay) + 1)
        due = max(due, sent + 1)
        transport.write(frames[sent] if due - sent == 1 else b"".join(frames[sent:due]))
        if encoded.shape.hold and sent == 1 and due < total:
            self._held = (encoded, due)
            self._state.held.add(self)
            return  # until release(); the handle stays set, so connection_lost still counts it
        if due < total:
            self._handle = self._loop.call_at(start + (due - 1) * delay, self._tick, encoded, start, due)
            return
        self._handle = None
        self._busy = False
        self._state.open_streams -= 1
        if self._buf:
            self._next_request()


def raise_fd_limit() -> None:
    """Thousands of connections need more than the default 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(host: str, port: int, shape: Shape) -> None:
    loop = asyncio.get_running_loop()
    state = State(shape)
    server = await loop.create_server(lambda: UpstreamProtocol(state), host, port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--first-delay", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit()
    use_uvloop()
    shape = Shape(tokens=args.tokens, delay=args.delay, first_delay=args.first_delay, usage=not args.no_usage)
    asyncio.run(serve(args.host, args.port, shape))


if __name__ == "__main__":
    main()
