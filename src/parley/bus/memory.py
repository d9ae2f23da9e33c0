"""In-process event bus: one channel per live session, fan-out of pre-encoded SSE frames.

Each event is encoded once, at publish, and the same bytes go to every subscriber. A channel keeps
the frames of its current (or last) turn so `GET .../events` with `Last-Event-ID` can resume.
Subscriber queues are unbounded but short-lived: a turn is bounded by max_tokens, a writer
drains its whole queue on every wake-up, and a subscriber that disconnects is removed. The bus
does not know event types: the publisher passes the event and a function that encodes it as the
frame for the id the channel assigns. Imports only the standard library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

END = b""  # sentinel: this subscriber's stream ends (after `done`, or without it when closed)


class Subscription:
    """Frames queued for one stream, read by one writer; `END` ends the stream.

    A list and at most one waiting future: publishing a token is an append (and a wake-up when the
    writer sleeps), with no per-frame queue machinery.
    """

    __slots__ = ("_closers", "_frames", "_waiter")

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closers: list[Callable[[], object]] = []

    def on_close(self, closer: Callable[[], object]) -> None:
        """Run `closer` when the reader leaves (what feeds this subscription stops)."""
        self._closers.append(closer)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for closer in closers:
            closer()

    def put(self, frames: list[bytes]) -> None:
        self._frames += frames
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def drain(self) -> list[bytes]:
        """Everything queued right now, without waiting (lets the writer coalesce frames)."""
        frames = self._frames
        self._frames = []
        return frames

    async def wait(self) -> None:
        """Return once something is queued (at once if something already is)."""
        if self._frames:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter


class SessionChannel:
    """Event stream of one session.

    The replay buffer holds the frames of the current (or last) turn only, so frame `i` has the
    id `<turn>-<i + 1>`, where the turn's number is its stream number from the database.
    """

    __slots__ = ("_frames", "_subscribers", "closed", "session_id", "turn", "turn_open")

    def __init__(self, session_id: str, turn: int = 0) -> None:
        self.session_id = session_id
        self.turn = turn
        self._frames: list[bytes] = []
        self._subscribers: set[Subscription] = set()
        self.closed = False
        self.turn_open = False

    def begin_turn(self, number: int) -> list[bytes]:
        """Start turn `number` (its stream number); the previous turn's frames are dropped. Returns
        the list its frames will be kept in."""
        self.turn = number
        self._frames = []
        self.turn_open = True
        return self._frames

    def publish(self, event: Any, encode: Callable[[Any, int, int], list[bytes]], *, final: bool = False) -> None:
        """Fan out `encode(event, turn, seq)`, the event's frames numbered from the next id; `final`
        ends the turn's streams after them. (Two arguments rather than one closure: this runs once
        per network read of a reply.)"""
        frames = encode(event, self.turn, len(self._frames) + 1)
        self._frames += frames
        for sub in self._subscribers:
            sub.put(frames)
        if final:
            self.turn_open = False
            for sub in self._subscribers:
                sub.put([END])
            self._subscribers.clear()

    def subscribe(self, *, replay_after: tuple[int, int] | None = None, replay_all: bool = False) -> Subscription:
        """Subscribe to what comes next; optionally replay buffered frames first.

        `replay_after=(turn, seq)` replays the buffered frames newer than that id; `replay_all`
        replays the whole buffered turn.
        """
        sub = Subscription()
        if replay_all:
            sub._frames.extend(self._frames)
        elif replay_after is not None:
            turn, seq = replay_after
            if turn < self.turn:
                sub._frames.extend(self._frames)
            elif turn == self.turn:
                sub._frames.extend(self._frames[max(seq, 0) :])
        if self.closed or not self.turn_open:
            sub.put([END])
        else:
            self._subscribers.add(sub)
        return sub

    def has_frames_after(self, after: tuple[int, int] | None) -> bool:
        if not self._frames:
            return False
        return after is None or (self.turn, len(self._frames)) > after

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscriber's stream (no `done`): the session was closed or dropped."""
        self.closed = True
        for sub in self._subscribers:
            sub.put([END])
        self._subscribers.clear()


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """`"<stream>-<seq>"` -> (stream, seq); None for absent or malformed ids. (`.` between the two
    numbers is read too: the form earlier versions sent.)"""
    if not value:
        return None
    value = value.strip()
    turn, _, seq = value.partition("-") if "-" in value else value.partition(".")
    if not (turn.isdigit() and seq.isdigit()):
        return None
    return int(turn), int(seq)
