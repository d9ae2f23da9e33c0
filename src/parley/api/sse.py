"""The SSE response of a turn: frames from a bus subscription, coalesced, with heartbeats.

Frames are pre-encoded by the bus; whatever is queued when the writer wakes up goes out in one
socket write. A `: ping` comment goes out after `heartbeat` seconds of silence, which keeps
proxies from timing out and makes a vanished client noticed. The stream ends after `done` (or
when the session is closed). The turn does not depend on this response: a client that leaves
only unsubscribes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse

from parley.bus.memory import END, Subscription
from parley.chat.events import HEARTBEAT_FRAME

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    "Connection": "keep-alive",
}


async def _frames(sub: Subscription, heartbeat: float, on_close: Callable[[], None]) -> AsyncIterator[bytes]:
    queue = sub.queue
    try:
        while True:
            if queue.empty():
                try:
                    async with asyncio.timeout(heartbeat):
                        first = await queue.get()
                except TimeoutError:
                    yield HEARTBEAT_FRAME
                    continue
                frames = [first, *sub.drain()]
            else:
                frames = sub.drain()
            if END in frames:
                body = b"".join(frames[: frames.index(END)])
                if body:
                    yield body
                return
            yield b"".join(frames)
    finally:
        on_close()


def sse_response(sub: Subscription, *, heartbeat: float, on_close: Callable[[], None]) -> StreamingResponse:
    return StreamingResponse(_frames(sub, heartbeat, on_close), media_type="text/event-stream", headers=SSE_HEADERS)
