"""The throwaway Redis server, driven by redis-py's asyncio client as parley will drive it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.redis import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=False)
    yield client
    await client.aclose()


async def test_answers_ping(client: Redis) -> None:
    assert await client.ping() is True


async def test_stream_keeps_entries_in_order(client: Redis) -> None:
    first = await client.xadd("turn:1", {b"frame": b"event: content_delta\ndata: {}\n\n"})
    second = await client.xadd("turn:1", {b"frame": b"event: message_end\ndata: {}\n\n"})

    entries = await client.xrange("turn:1")

    assert [entry_id for entry_id, _ in entries] == [first, second]
    assert [fields[b"frame"] for _, fields in entries] == [
        b"event: content_delta\ndata: {}\n\n",
        b"event: message_end\ndata: {}\n\n",
    ]


async def test_restart_on_the_same_port_loses_data_and_clients_reconnect(
    redis_server: RedisServer, client: Redis
) -> None:
    await client.set(b"kept?", b"yes")
    await client.xadd("turn:1", {b"frame": b"data: 1\n\n"})
    port = redis_server.port

    redis_server.stop()
    with pytest.raises(RedisConnectionError):
        await client.ping()

    redis_server.start()
    assert redis_server.port == port
    # The same client object: its pooled connection died with the server and is replaced.
    assert await client.ping() is True
    assert await client.get(b"kept?") is None
    assert await client.xlen("turn:1") == 0


async def test_kill_is_abrupt_and_start_brings_it_back(redis_server: RedisServer, client: Redis) -> None:
    await client.set(b"kept?", b"yes")

    redis_server.kill()
    assert not redis_server.running
    with pytest.raises(RedisConnectionError):
        await client.ping()

    redis_server.start()
    assert await client.get(b"kept?") is None


async def test_client_kill_pubsub_cuts_subscribers_only(redis_server: RedisServer) -> None:
    # No retries: by default redis-py reconnects and resubscribes silently, and the cut would
    # go unseen; here the subscriber must see it.
    subscriber = Redis.from_url(redis_server.url, decode_responses=False, retry=Retry(NoBackoff(), 0))
    publisher = Redis.from_url(redis_server.url, decode_responses=False)
    pubsub = subscriber.pubsub()
    try:
        await pubsub.subscribe("session:1")
        confirmation = await pubsub.get_message(timeout=2)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        assert await publisher.publish("session:1", b"frame") == 1
        delivered = await pubsub.get_message(timeout=2)
        assert delivered is not None
        assert delivered["data"] == b"frame"
        publisher_connection = await publisher.client_id()

        assert redis_server.client_kill("pubsub") == 1

        with pytest.raises(RedisConnectionError):
            await pubsub.get_message(timeout=2)
        # The publisher's ordinary connection was not of the kind dropped: still the same one.
        assert await publisher.client_id() == publisher_connection
    finally:
        await pubsub.aclose()
        await subscriber.aclose()
        await publisher.aclose()
