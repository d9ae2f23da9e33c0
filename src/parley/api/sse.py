"""The SSE response of a turn: frames from a bus subscription, coalesced, with heartbeats.

Frames are pre-encoded by the bus; whatever is queued when the writer wakes up goes out in one
socket write. A `: ping` comment goes out after `heartbeat` seconds of silence, which keeps
proxies from timing out and makes a vanished client noticed. The stream ends after `done` (or
when the session is closed). The turn does not depend on this response: a client that leaves
only unsubscribes.

This is a plain ASGI response rather than a StreamingResponse over an async generator, because it
runs once per token: one wake-up, one drain, one `send` per batch of frames. The heartbeat is one
timer per stream, re-armed lazily from the time of the last write (not a timeout per wake-up),
and one task per stream watches for the client leaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from parley import metrics
from parley.bus.memory import END, Subscription
from parley.chat.events import HEARTBEAT_FRAME

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    "Connection": "keep-alive",
}


class SSEResponse(Response):
    """Writes a subscription's frames until `END`; see the module docstring."""

    media_type = "text/event-stream"

    def __init__(self, sub: Subscription, *, heartbeat: float, on_close: Callable[[], None]) -> None:
        self.sub = sub
        self.heartbeat = heartbeat
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers(SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub
        loop = asyncio.get_running_loop()
        heartbeat = self.heartbeat
        last_write = loop.time()
        timer: asyncio.TimerHandle | None = None

        def ping_if_silent() -> None:
            nonlocal timer
            silent_until = last_write + heartbeat
            now = loop.time()
            if now >= silent_until:
                sub.put([HEARTBEAT_FRAME])
                silent_until = now + heartbeat
            timer = loop.call_at(silent_until, ping_if_silent)

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    sub.put([END])
                    return

        watcher = loop.create_task(watch_disconnect())
        watcher.add_done_callback(_retrieve)
        _streams_inc()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            timer = loop.call_at(last_write + heartbeat, ping_if_silent)
            while True:
                await sub.wait()
                frames = sub.drain()
                if END in frames:  # the last frames and the end of the body go out in one write
                    body = b"".join(frames[: frames.index(END)])
                    await send({"type": "http.response.body", "body": body, "more_body": False})
                    break
                await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
                last_write = loop.time()
        finally:
            if timer is not None:
                timer.cancel()
            watcher.cancel()  # not awaited: awaiting here could swallow a cancellation of this task
            _streams_dec()
            self.on_close()


_streams_inc = metrics.ACTIVE_STREAMS.inc
_streams_dec = metrics.ACTIVE_STREAMS.dec


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a watcher's outcome as seen (a receive() that failed must not log as unretrieved)."""
    if not task.cancelled():
        task.exception()


def sse_response(sub: Subscription, *, heartbeat: float, on_close: Callable[[], None]) -> SSEResponse:
    return SSEResponse(sub, heartbeat=heartbeat, on_close=on_close)
