"""Live event streams between parley processes, through Redis (optional: `PARLEY_REDIS_URL`).

Redis carries what one process streams to readers on other processes, and wakes the process that
runs a turn when another one is asked to stop or close it. The database stays the truth: losing
Redis loses cross-process re-attach and the fast wake-up, never data (`docs/architecture.md`).

- **Streams.** A running turn's frames go to the Redis Stream `parley:stream:<session>`: one entry
  per flush of a turn, holding the frames that flush sends (a field per frame, named by its
  sequence number), whose entry id is the SSE id of its last frame (`<stream number>-<seq>`). The
  token path never waits on Redis: publishing marks the turn dirty, and one flusher task sends
  what each dirty turn has not sent yet, all turns in one pipelined round trip: one entry per turn
  per wake-up (at most one every `_GATHER_SECONDS`), however many reads it gathered. A turn's
  first entry trims the previous turn's (MINID); later ones use NOMKSTREAM, so a stream that
  vanished mid-turn (Redis restarted) is noticed, and written again whole from the turn's frames
  in memory. The key's expiry is set
  with a turn's first entry and renewed with its last.
- **Following.** `follow` feeds a `Subscription` from XREAD: a replay after the reader's last id,
  then the live entries, until `done`. Entry ids that skip a number are a gap: it is said, never
  skipped silently. A producer that stops refreshing its liveness key (`parley:alive:<process>`)
  ends its readers' streams with the frames the caller supplies (`turn_lost`, then `done`).
- **Control.** Stop and close go out on the pub/sub channel `parley:control`; the process that runs
  the turn acts on them. Its once-per-half-second look at the database is the fallback.

Blocking reads wait at most `_BLOCK_MS`, well under the client's socket timeout (redis-py's default
would cut a longer block). Imports: standard library, redis-py, parley.bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from parley.bus.memory import END, Subscription

log = logging.getLogger("parley.relay")

_BLOCK_MS = 2_000  # one XREAD's wait; the liveness check runs between them
_SOCKET_TIMEOUT = 10.0
_ALIVE_EVERY = 2.0  # seconds between refreshes of this process's liveness key
_ALIVE_FOR_MS = 6_000  # a process not heard from for this long is gone
_STREAM_TTL_MS = 15 * 60 * 1000  # how long a turn's frames stay re-attachable after its last write
_CONTROL = "parley:control"
_GIVE_UP_SECONDS = 10.0  # a follower whose Redis stays unreachable this long ends its stream
# After a wake-up the flusher lets the turns' next reads arrive for this long, so that one round
# trip carries them all: at 100 paced streams, 6% less CPU per turn and half Redis's CPU
# (docs/performance-log.md). A follower on another process sees frames this much later (the
# process running the turn streams to its own readers at once); a turn's last frames go at once,
# so that a turn that ended here can be re-attached to anywhere as soon as its reader saw `done`.
_GATHER_SECONDS = 0.05

IdPair = tuple[int, int]
Control = Callable[[str, str], None]  # (operation, session id)


def stream_key(session_id: str) -> str:
    return f"parley:stream:{session_id}"


def _alive_key(process: str) -> str:
    return f"parley:alive:{process}"


def _entries(answer: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's entries for one stream, in either reply shape (RESP2: a list; RESP3: a mapping)."""
    if not answer:
        return []
    per_stream = next(iter(answer.values())) if isinstance(answer, dict) else answer[0][1]
    if per_stream and isinstance(per_stream[0], list) and isinstance(per_stream[0][0], list):
        per_stream = per_stream[0]  # RESP3 nests the entries one level deeper
    return [(raw_id, fields) for raw_id, fields in per_stream]


def _entry_id(raw: bytes | str) -> IdPair:
    text = raw.decode() if isinstance(raw, bytes) else raw
    stream, _, seq = text.partition("-")
    return int(stream), int(seq)


@dataclass(slots=True, eq=False)
class _Outgoing:
    """A running turn's frames (the channel's own list) and how many Redis has."""

    stream: int
    frames: list[bytes]
    sent: int = 0
    final: bool = False


StreamRef = tuple[str, int]  # (session id, stream number)


@dataclass(slots=True, eq=False)
class _State:
    outgoing: dict[StreamRef, _Outgoing] = field(default_factory=dict)
    dirty: set[StreamRef] = field(default_factory=set)


class RedisRelay:
    """One process's link to Redis: publisher, followers, control channel, liveness."""

    def __init__(self, url: str, *, process: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=2.0, health_check_interval=15
        )
        self.process = process
        self._state = _State()
        self._wake = asyncio.Event()
        self._ending = asyncio.Event()  # a turn's last frames wait: flush without gathering
        self._tasks: list[asyncio.Task[None]] = []
        self._control: Control | None = None
        self.available = False  # the last round trip to Redis succeeded

    # -- lifetime ------------------------------------------------------------------------------------

    async def start(self, on_control: Control) -> None:
        self._control = on_control
        loop = asyncio.get_running_loop()
        for work in (self._flush_loop, self._alive_loop, self._control_loop):
            self._tasks.append(loop.create_task(work(), name=f"relay:{work.__name__}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._redis.delete(_alive_key(self.process))
        await self._redis.aclose()

    # -- publishing ----------------------------------------------------------------------------------

    def track(self, session_id: str, stream: int, frames: list[bytes]) -> None:
        """Relay the frames of a turn's stream as they are appended to `frames`."""
        self._state.outgoing[(session_id, stream)] = _Outgoing(stream, frames)

    def dirty(self, session_id: str, stream: int, *, final: bool = False) -> None:
        """New frames in a tracked stream (`final`: its last ones). Never waits."""
        ref = (session_id, stream)
        outgoing = self._state.outgoing.get(ref)
        if outgoing is None:
            return
        outgoing.final = outgoing.final or final
        self._state.dirty.add(ref)
        if final:
            self._ending.set()
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._ending.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ending.wait(), _GATHER_SECONDS)
            self._ending.clear()
            self._wake.clear()
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: what was not sent goes with the next flush
                if self.available:
                    log.warning("could not relay frames to Redis: %s", exc)
                self.available = False
                await asyncio.sleep(0.5)
                if self._state.dirty:
                    self._wake.set()

    async def _flush(self) -> None:
        state = self._state
        # In stream order: a session's finishing turn goes out before the next one trims it.
        batch = [(ref, state.outgoing[ref]) for ref in sorted(state.dirty) if ref in state.outgoing]
        state.dirty = set()
        if not batch:
            return
        pipe = self._redis.pipeline(transaction=False)
        plan: list[tuple[StreamRef, _Outgoing, int, int]] = []  # turn, its frames, sent up to, commands
        for ref, out in batch:
            key = stream_key(ref[0])
            upto = len(out.frames)
            if upto <= out.sent:
                continue
            first = out.sent == 0
            frames = {str(seq): out.frames[seq - 1] for seq in range(out.sent + 1, upto + 1)}
            pipe.xadd(
                key,
                frames,  # type: ignore[arg-type]  # field names are str, values bytes
                id=f"{out.stream}-{upto}",
                nomkstream=not first,
                minid=f"{out.stream}-0" if first else None,
                approximate=False,
            )
            commands = 1
            if first or out.final:
                pipe.pexpire(key, _STREAM_TTL_MS)
                commands += 1
            plan.append((ref, out, upto, commands))
        if not plan:
            return
        results = await pipe.execute(raise_on_error=False)
        self.available = True
        at = 0
        for ref, out, upto, commands in plan:
            written = results[at]
            at += commands
            if written is None:  # NOMKSTREAM and no stream: Redis lost it
                log.warning("the live stream of session %s vanished from Redis; writing it again", ref[0])
                out.sent = 0
                state.dirty.add(ref)
                self._wake.set()
                continue
            # An id not above the stream's top was written by an earlier flush that timed out.
            if isinstance(written, Exception) and "equal or smaller" not in str(written):
                raise written
            out.sent = upto
            if out.final and out.sent == len(out.frames):
                del state.outgoing[ref]

    # -- following -----------------------------------------------------------------------------------

    async def has_ended(self, session_id: str, stream: int, is_last: Callable[[bytes], bool]) -> bool:
        """Whether Redis holds the last frame (`is_last`) of stream `stream`."""
        try:
            newest = await self._redis.xrevrange(
                stream_key(session_id), max=f"{stream}-{2**64 - 1}", min=f"{stream}-0", count=1
            )
        except Exception:
            return False
        fields = (newest[0][1] if newest else None) or {}
        return any(isinstance(frame, bytes) and is_last(frame) for frame in fields.values())

    async def has_after(self, session_id: str, stream: int, after: IdPair | None) -> bool:
        """Whether Redis holds frames of stream `stream` after `after` (from its start when None)."""
        start = after if after is not None and after[0] == stream else (stream, 0)
        try:
            found = await self._redis.xrange(
                stream_key(session_id), min=f"({start[0]}-{start[1]}", max=f"{stream}-{2**64 - 1}", count=1
            )
        except Exception:
            return False
        return bool(found)

    def follow(
        self,
        session_id: str,
        *,
        stream: int,
        after: IdPair | None,
        owner: str | None,
        is_last: Callable[[bytes], bool],
        lost: Callable[[IdPair], list[bytes]],
        gap: Callable[[IdPair, IdPair], bytes],
    ) -> Subscription:
        """A subscription to stream `stream` of the session from after `after` (or its start) to
        its last frame (`is_last`), fed from Redis. `lost(last id)` gives the frames that end it
        when its producer is gone; `gap(last id, next id)` the frame that says what went missing."""
        sub = Subscription()
        start = after if after is not None and after[0] == stream else (stream, 0)
        task = asyncio.get_running_loop().create_task(
            self._follow(stream_key(session_id), start, sub, owner, is_last, lost, gap)
        )
        sub.on_close(task.cancel)
        return sub

    async def _follow(
        self,
        key: str,
        last: IdPair,
        sub: Subscription,
        owner: str | None,
        is_last: Callable[[bytes], bool],
        lost: Callable[[IdPair], list[bytes]],
        gap: Callable[[IdPair, IdPair], bytes],
    ) -> None:
        import redis.exceptions

        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                answer = await self._redis.xread({key: f"{last[0]}-{last[1]}"}, count=500, block=_BLOCK_MS)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                # Redis restarting: read on from the same id. Gone for good: end this stream (not
                # the turn: no `done`), and the reader's next re-attach is told why.
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since > _GIVE_UP_SECONDS:
                    sub.put([END])
                    return
                await asyncio.sleep(0.5)
                continue
            failing_since = None
            entries = _entries(answer)
            if not entries:
                if owner is not None and not await self.alive(owner):
                    sub.put([*lost(last), END])
                    return
                continue
            for raw_id, fields in entries:
                entry = _entry_id(raw_id)
                if entry[0] > last[0] and last[1] > 0:  # the next turn began: this one's end never came
                    sub.put([*lost(last), END])
                    return
                batch: list[bytes] = []
                for name, frame in fields.items():
                    seq = (entry[0], int(name))
                    if seq <= last:
                        continue  # the reader has it (its id was inside this entry)
                    if seq != (entry[0], last[1] + 1):
                        batch.append(gap(last, seq))
                    batch.append(frame)
                    last = seq
                    if is_last(frame):
                        sub.put([*batch, END])
                        return
                if batch:
                    sub.put(batch)

    # -- liveness and control ------------------------------------------------------------------------

    async def alive(self, process: str) -> bool:
        try:
            return bool(await self._redis.exists(_alive_key(process)))
        except Exception:
            return True  # cannot tell: keep waiting rather than end a stream that may be alive

    async def _alive_loop(self) -> None:
        key = _alive_key(self.process)
        while True:
            try:
                await self._redis.set(key, b"1", px=_ALIVE_FOR_MS)
                if not self.available:
                    log.info("Redis is reachable")
                self.available = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.available:
                    log.warning("Redis is unreachable: %s", exc)
                self.available = False
            await asyncio.sleep(_ALIVE_EVERY)

    async def send_control(self, operation: str, session_id: str) -> bool:
        """Tell every process to `operation` (stop | close) the session's turn; False if Redis is down."""
        try:
            await self._redis.publish(_CONTROL, f"{operation} {session_id}")
        except Exception as exc:
            log.warning("could not send %s for session %s through Redis: %s", operation, session_id, exc)
            return False
        return True

    async def _control_loop(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(_CONTROL)
                async for message in pubsub.listen():
                    operation, _, session_id = bytes(message["data"]).decode().partition(" ")
                    if self._control is not None and session_id:
                        self._control(operation, session_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("the Redis control channel dropped (%s); the database is watched meanwhile", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


async def open_relay(url: str | None, *, process: str, on_control: Control) -> RedisRelay | None:
    """The relay of `url` (started), or None without one."""
    if not url:
        return None
    relay = RedisRelay(url, process=process)
    await relay.start(on_control)
    return relay
