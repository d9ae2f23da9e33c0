"""Read parley's SSE responses as a client would (httpx2, our own line parsing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2


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
    comments: int = 0

    @property
    def types(self) -> list[str]:
        return [f.event for f in self.frames]

    def of(self, event: str) -> list[Frame]:
        return [f for f in self.frames if f.event == event]

    @property
    def text(self) -> str:
        return "".join(f.data["delta"] for f in self.frames if f.event == "content_delta")


def iter_frames(lines: Iterator[str], counter: list[int] | None = None) -> Iterator[Frame]:
    event, eid = "message", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Frame(event=event, data=json.loads("\n".join(data)), id=eid)
            event, data, eid = "message", [], None
        elif line.startswith(":"):
            if counter is not None:
                counter[0] += 1
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                eid = value


def read_stream(response: httpx2.Response, *, stop_after: int | None = None) -> Stream:
    """Consume a streamed response; `stop_after` leaves after that many frames (a client leaving)."""
    stream = Stream(status=response.status_code, headers=dict(response.headers))
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        response.read()
        stream.body = response.json()
        return stream
    counter = [0]
    for frame in iter_frames(response.iter_lines(), counter):
        stream.frames.append(frame)
        if stop_after is not None and len(stream.frames) >= stop_after:
            break
        if frame.event == "done":
            break
    stream.comments = counter[0]
    return stream


class FrameReader:
    """Read a streamed SSE response in steps (some frames, act, then the rest)."""

    def __init__(self, response: httpx2.Response) -> None:
        self.counter = [0]
        self._frames = iter_frames(response.iter_lines(), self.counter)
        self.seen: list[Frame] = []

    def take(self, n: int) -> list[Frame]:
        out = []
        for frame in self._frames:
            out.append(frame)
            if len(out) >= n or frame.event == "done":
                break
        self.seen.extend(out)
        return out

    def rest(self) -> list[Frame]:
        out = []
        for frame in self._frames:
            out.append(frame)
            if frame.event == "done":
                break
        self.seen.extend(out)
        return out
