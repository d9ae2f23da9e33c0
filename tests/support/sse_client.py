"""Read parley's SSE responses as a client would: httpx2's bytes through parley's own `SSEDecoder`.

`read_stream` reads a whole answer (or the JSON body of an error), `FrameReader` reads one in steps
so that a test can act between frames, and `iter_frames` is the plain iterator under both. Every
event's data is JSON, decoded here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2

from parley.providers.sse import ServerSentEvent, SSEDecoder


@dataclass
class Frame:
    event: str
    data: dict[str, Any]
    id: str | None


@dataclass
class Stream:
    status: int
    frames: list[Frame] = field(default_factory=list)
    body: Any = None  # the JSON body of a non-SSE answer
    headers: dict[str, str] = field(default_factory=dict)
    comments: int = 0  # `: ping` heartbeats

    @property
    def types(self) -> list[str]:
        return [f.event for f in self.frames]

    def of(self, event: str) -> list[Frame]:
        return [f for f in self.frames if f.event == event]

    @property
    def text(self) -> str:
        return "".join(f.data["delta"] for f in self.frames if f.event == "content_delta")


class HeartbeatCounter:
    """Counts `: ping` heartbeats in a stream's raw bytes, split anywhere.

    The decoder drops comments, and the heartbeat is the only comment parley sends. `: ping` then
    a line feed can be nothing else: JSON data never holds a raw line feed, and a data line ends
    in `}`. The pattern cannot overlap itself, so counting it in the previous chunk's last bytes
    plus the new chunk finds each heartbeat exactly once.
    """

    _PATTERN = b": ping\n"

    def __init__(self) -> None:
        self.count = 0
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        window = self._carry + chunk
        self.count += window.count(self._PATTERN)
        self._carry = window[-(len(self._PATTERN) - 1) :]


def iter_frames(response: httpx2.Response, heartbeats: HeartbeatCounter | None = None) -> Iterator[Frame]:
    """The frames of a streamed response, each as soon as its bytes have arrived."""
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        if heartbeats is not None:
            heartbeats.feed(chunk)
        for event in decoder.feed(chunk):
            yield _frame(event)
    for event in decoder.finish():
        yield _frame(event)


def _frame(event: ServerSentEvent) -> Frame:
    return Frame(event=event.event, data=json.loads(event.data), id=event.id or None)


class FrameReader:
    """A streamed SSE response read in steps: the test decides when to act, stop or leave."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.frames: list[Frame] = []  # every frame read so far
        self.ended = False  # the stream ended (not merely reached `done`)
        self._heartbeats = HeartbeatCounter()
        self._it = iter_frames(response, self._heartbeats)

    @property
    def comments(self) -> int:
        """`: ping` heartbeats among the bytes read so far."""
        return self._heartbeats.count

    @property
    def types(self) -> list[str]:
        return [f.event for f in self.frames]

    @property
    def text(self) -> str:
        return "".join(f.data["delta"] for f in self.frames if f.event == "content_delta")

    def next(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""
        frame = next(self._it, None)
        if frame is None:
            self.ended = True
        else:
            self.frames.append(frame)
        return frame

    def until(self, pred: Callable[[Frame], bool]) -> Frame:
        """Read until a frame matches `pred`; returns it."""
        while (frame := self.next()) is not None:
            if pred(frame):
                return frame
        raise AssertionError(f"stream ended before the expected frame; got {self.types}")

    def deltas(self, n: int) -> None:
        """Read until `n` content_delta frames arrived in total."""
        while sum(1 for f in self.frames if f.event == "content_delta") < n:
            if self.next() is None:
                raise AssertionError(f"stream ended early: {self.types}")

    def take(self, n: int) -> list[Frame]:
        """Read `n` more frames, fewer if `done` or the end of the stream comes first; returns them."""
        start = len(self.frames)
        while len(self.frames) - start < n and (frame := self.next()) is not None:
            if frame.event == "done":
                break
        return self.frames[start:]

    def rest(self) -> list[Frame]:
        """Read to `done` or the end of the stream; returns the frames read by this call."""
        start = len(self.frames)
        while (frame := self.next()) is not None:
            if frame.event == "done":
                break
        return self.frames[start:]


def read_stream(response: httpx2.Response, *, stop_after: int | None = None) -> Stream:
    """Consume a streamed response; `stop_after` leaves after that many frames (a client leaving)."""
    stream = Stream(status=response.status_code, headers=dict(response.headers))
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        response.read()
        stream.body = response.json()
        return stream
    reader = FrameReader(response)
    stream.frames = reader.take(stop_after) if stop_after is not None else reader.rest()
    stream.comments = reader.comments
    return stream
