"""The Redis relay on its own: an entry holds a flush's frames under the id of its last one, a
reader resumes inside an entry, a gap is said, a dead producer ends its followers' streams, and
the token path never waits."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from parley.bus import redis as redis_bus
from parley.bus.memory import END, Subscription
from parley.bus.redis import RedisRelay, stream_key
from parley.chat.events import ContentDelta, Done, encode, is_done_frame
from parley.chat.sessions import _gap_frame
from tests.support.redis import RedisServer


def _lost(last: tuple[int, int]) -> list[bytes]:
    return [b"lost after %d-%d" % last]


async def _read_all(sub: Subscription, within: float = 10) -> list[bytes]:
    frames: list[bytes] = []
    async with asyncio.timeout(within):
        while END not in frames:
            await sub.wait()
            frames += sub.drain()
    return frames[: frames.index(END)]


def _noop(_operation: str, _session: str) -> None:
    return None


async def test_frames_go_out_under_their_ids_and_a_follower_reads_them_to_the_end(redis_server: RedisServer) -> None:
    relay = RedisRelay(redis_server.url, process="host/1/a")
    await relay.start(_noop)
    try:
        frames: list[bytes] = []
        relay.track("s1", 7, frames)
        frames += encode(ContentDelta(["a", "b"]), 7, 1)
        relay.dirty("s1", 7)
        client = redis.Redis.from_url(redis_server.url)
        for _ in range(500):  # until the first flush went out (Redis is polled: nothing to wait on)
            if await client.exists(stream_key("s1")):
                break
            await asyncio.sleep(0.01)
        follower = relay.follow(
            "s1", stream=7, after=(7, 1), owner=None, is_last=is_done_frame, lost=_lost, gap=_gap_frame
        )
        frames += encode(Done(), 7, 3)
        relay.dirty("s1", 7, final=True)
        read = await _read_all(follower)
        entries = await client.xrange(stream_key("s1"))
        await client.aclose()
    finally:
        await relay.close()
    assert read == frames[1:]  # after 7-1, which was inside the first entry
    # One entry per flush: the read's two deltas together, then `done`.
    assert [(entry_id, list(fields)) for entry_id, fields in entries] == [
        (b"7-2", [b"1", b"2"]),
        (b"7-3", [b"3"]),
    ]


async def test_a_missing_entry_is_said_as_a_gap_and_a_dead_producer_ends_the_stream(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for seq in (1, 2, 4):  # 3 never arrived
        frame = encode(ContentDelta([f"t{seq}"]), 5, seq)[0]
        await client.xadd(stream_key("s2"), {str(seq): frame}, id=f"5-{seq}")
    relay = RedisRelay(redis_server.url, process="host/1/a")
    await relay.start(_noop)
    try:
        follower = relay.follow(
            "s2", stream=5, after=None, owner="host/2/gone", is_last=is_done_frame, lost=_lost, gap=_gap_frame
        )
        read = await _read_all(follower)  # the owner never announced itself: it is gone
    finally:
        await relay.close()
        await client.aclose()
    assert b"event: stream_gap" in read[2]
    assert b'"afterId":"5-2","nextId":"5-4"' in read[2]
    assert [b"t1" in read[0], b"t2" in read[1], b"t4" in read[3]] == [True, True, True]
    assert read[-1] == b"lost after 5-4"


async def test_the_reads_of_a_moment_go_out_in_one_entry_and_its_end_is_known(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A moment a loaded test machine cannot overrun: what is checked is the gathering, not its length.
    monkeypatch.setattr(redis_bus, "_GATHER_SECONDS", 2.0)
    relay = RedisRelay(redis_server.url, process="host/1/a")
    await relay.start(_noop)
    client = redis.Redis.from_url(redis_server.url)
    try:
        frames: list[bytes] = []
        relay.track("s2", 3, frames)
        for seq in range(1, 6):  # five reads, a few milliseconds apart: gathered into one entry
            frames += encode(ContentDelta([f"t{seq}"]), 3, seq)
            relay.dirty("s2", 3)
            await asyncio.sleep(0.002)
        assert not await relay.has_ended("s2", 3, is_done_frame)
        frames += encode(Done(), 3, 6)
        relay.dirty("s2", 3, final=True)
        for _ in range(500):
            if await relay.has_ended("s2", 3, is_done_frame):
                break
            await asyncio.sleep(0.01)
        entries = await client.xrange(stream_key("s2"))
    finally:
        await client.aclose()
        await relay.close()
    assert [list(fields) for _, fields in entries] == [[b"1", b"2", b"3", b"4", b"5", b"6"]]
