"""In-process event bus: one channel per live session, fan-out of pre-encoded SSE frames.

Each event is encoded once, at publish, and the same bytes go to every subscriber. A channel keeps
the frames of its current (or last) turn so `GET .../events` with `Last-Event-ID` can resume.
Subscriber queues are unbounded but short-lived: a turn is bounded by max_tokens, and a
subscriber that disconnects is removed. The bus does not know event types: the publisher passes a
function that encodes the frame for the id the channel assigns. Imports only the standard library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

END = b""  # sentinel: this subscriber's stream ends (after `done`, or without it when closed)


@dataclass(slots=True)
class _Entry:
    turn: int
    seq: int
    frame: bytes


@dataclass(eq=False, slots=True)
class Subscription:
    """A queue of encoded frames; `END` ends the stream."""

    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    def drain(self) -> list[bytes]:
        """Everything queued right now, without waiting (lets the writer coalesce frames)."""
        frames: list[bytes] = []
        q = self.queue
        while not q.empty():
            frames.append(q.get_nowait())
        return frames


class SessionChannel:
    """Event stream of one session."""

    __slots__ = ("_entries", "_seq", "_subscribers", "closed", "session_id", "turn", "turn_open")

    def __init__(self, session_id: str, turn: int = 0) -> None:
        self.session_id = session_id
        self.turn = turn
        self._seq = 0
        self._entries: list[_Entry] = []
        self._subscribers: set[Subscription] = set()
        self.closed = False
        self.turn_open = False

    def begin_turn(self) -> int:
        """Start numbering a new turn; the previous turn's frames are dropped."""
        self.turn += 1
        self._seq = 0
        self._entries = []
        self.turn_open = True
        return self.turn

    def publish(self, encode: Callable[[str], bytes], *, final: bool = False) -> None:
        """Assign the next id and fan out `encode(id)`; `final` ends the turn's streams after it."""
        self._seq += 1
        frame = encode(f"{self.turn}.{self._seq}")
        self._entries.append(_Entry(self.turn, self._seq, frame))
        for sub in self._subscribers:
            sub.queue.put_nowait(frame)
        if final:
            self.turn_open = False
            for sub in self._subscribers:
                sub.queue.put_nowait(END)
            self._subscribers.clear()

    def subscribe(self, *, replay_after: tuple[int, int] | None = None, replay_all: bool = False) -> Subscription:
        """Subscribe to what comes next; optionally replay buffered frames first.

        `replay_after=(turn, seq)` replays the buffered frames newer than that id; `replay_all`
        replays the whole buffered turn.
        """
        sub = Subscription()
        for entry in self._entries:
            if replay_all or (replay_after is not None and (entry.turn, entry.seq) > replay_after):
                sub.queue.put_nowait(entry.frame)
        if self.closed or not self.turn_open:
            sub.queue.put_nowait(END)
        else:
            self._subscribers.add(sub)
        return sub

    def has_frames_after(self, after: tuple[int, int] | None) -> bool:
        if not self._entries:
            return False
        last = self._entries[-1]
        return after is None or (last.turn, last.seq) > after

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscriber's stream (no `done`): the session was closed or dropped."""
        self.closed = True
        for sub in self._subscribers:
            sub.queue.put_nowait(END)
        self._subscribers.clear()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """`"<turn>.<seq>"` -> (turn, seq); None for absent or malformed ids."""
    if not value:
        return None
    turn, _, seq = value.strip().partition(".")
    if not (turn.isdigit() and seq.isdigit()):
        return None
    return int(turn), int(seq)
