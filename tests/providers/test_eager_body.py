"""Eager body writes: with the task factory, a POST's bytes leave in the step that makes it.

Real aiohttp against a real socket server in a thread, which reports what it received without
the event loop's help: a test can block the loop and still learn whether the request went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from parley.app import create_app
from parley.config import load_settings
from parley.providers.eager_body import eager_body_factory, use_eager_body_writes
from tests.conftest import base_env

ON_312 = sys.version_info >= (3, 12)


class RawServer:
    """Answers each `POST` once its whole body is in, with `204`, keeping the connection open.

    `bodies` collects what arrived, `arrived` is released once per complete request, and
    `closed` is set when the client closes the connection.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.bodies: list[bytes] = []
        self.arrived = threading.Semaphore(0)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/post"

    def wait_for_request(self, timeout: float) -> bool:
        return self.arrived.acquire(timeout=timeout)

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        buffer = b""
        with conn:
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].decode("latin-1").lower()
                    length = int(head.split("content-length:")[1].split("\r\n")[0])
                    if len(buffer) >= head_end + 4 + length:
                        self.bodies.append(buffer[head_end + 4 : head_end + 4 + length])
                        buffer = buffer[head_end + 4 + length :]
                        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                        self.arrived.release()
                        continue
                piece = conn.recv(1 << 20)
                if not piece:
                    self.closed.set()
                    return
                buffer += piece

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    raw = RawServer()
    yield raw
    raw.close()


class Recorded:
    """The task factory under test, noting what it returned for aiohttp's body writer."""

    def __init__(self) -> None:
        self.inner = eager_body_factory(None)
        self.body_writers: list[tuple[asyncio.Future[Any], bool]] = []  # (result, done when made)

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made = self.inner(loop, coro, **kwargs)
        if getattr(coro, "__qualname__", "") == "ClientRequest.write_bytes":
            self.body_writers.append((made, made.done()))
        return made


async def _post_in_one_step(session: aiohttp.ClientSession, server: RawServer, body: bytes) -> bool:
    """Start a POST, let it run one step, then block the loop: did the server get the request?"""
    request = asyncio.create_task(session.post(server.url, data=body))
    await asyncio.sleep(0)  # the request task's first step runs; it then waits for the answer
    went_out = server.wait_for_request(timeout=2)  # blocks the loop on purpose
    response = await request
    assert response.status == 204
    response.release()
    if not went_out:  # it left later: collect its arrival so the next request starts clean
        assert server.wait_for_request(timeout=5)
    return went_out


@pytest.mark.parametrize("eager", [True, False], ids=["with-factory", "plain-loop"])
async def test_a_post_leaves_in_the_step_that_makes_it_only_with_the_factory(server: RawServer, eager: bool) -> None:
    loop = asyncio.get_running_loop()
    restore = use_eager_body_writes(loop) if eager else (lambda: None)
    try:
        async with aiohttp.ClientSession() as session:
            warm = await session.post(server.url, data=b"warm-up")  # leaves a pooled connection
            warm.release()
            assert server.wait_for_request(timeout=5)
            went_out = await _post_in_one_step(session, server, b'{"model": "m"}')
    finally:
        restore()
    assert server.bodies == [b"warm-up", b'{"model": "m"}']
    # On 3.11 a plain loop sends it a round later (aiohttp writes the body in a task of its own).
    assert went_out is (eager or ON_312)


@pytest.mark.skipif(ON_312, reason="the factory is installed on Python 3.11 only; aiohttp is eager itself on 3.12+")
async def test_use_installs_on_311_and_restore_puts_the_previous_factory_back() -> None:
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def previous(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(previous)
    try:
        restore = use_eager_body_writes(loop)
        assert loop.get_task_factory() not in (None, previous)

        async def other() -> int:
            return 7

        assert await asyncio.create_task(other()) == 7
        assert len(made) == 1  # anything but the body writer goes to the factory that was there
        restore()
        assert loop.get_task_factory() is previous
    finally:
        loop.set_task_factory(None)


class HeldBody:
    """A request body whose second half is held back until `release`: its writer has to wait."""

    def __init__(self, first: bytes, second: bytes) -> None:
        self.parts = (first, second)
        self.released = asyncio.Event()

    @property
    def length(self) -> str:
        return str(sum(map(len, self.parts)))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.parts[0]
        await self.released.wait()
        yield self.parts[1]


@asynccontextmanager
async def held_post(server: RawServer, body: HeldBody) -> AsyncIterator[tuple[asyncio.Task[Any], Recorded]]:
    """A POST of `body` under the recorded factory, started and given time to send its first half."""
    loop = asyncio.get_running_loop()
    recorded = Recorded()
    loop.set_task_factory(recorded)
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(
                session.post(server.url, data=body.__aiter__(), headers={"Content-Length": body.length})
            )
            await asyncio.sleep(0.2)
            yield request, recorded
    finally:
        loop.set_task_factory(None)


async def test_a_body_writer_that_must_wait_finishes_in_a_task_with_every_byte(server: RawServer) -> None:
    body = HeldBody(b"first half, ", b"second half")
    async with held_post(server, body) as (request, recorded):
        assert not request.done()
        assert server.bodies == []
        body.released.set()
        response = await asyncio.wait_for(request, timeout=10)
        assert response.status == 204
        response.release()
    assert server.bodies == [b"first half, second half"]
    (writer, done_when_made), *_ = recorded.body_writers
    assert not done_when_made  # it waited, so the rest ran in a task
    assert writer.done()
    assert not writer.cancelled()
    assert writer.exception() is None


async def test_cancelling_a_request_whose_body_waits_cancels_its_writer_and_closes_the_connection(
    server: RawServer,
) -> None:
    async with held_post(server, HeldBody(b"first half, ", b"never sent")) as (request, recorded):
        (writer, done_when_made), *_ = recorded.body_writers
        assert not done_when_made
        assert not writer.done()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(writer, timeout=5)
    assert await asyncio.to_thread(server.closed.wait, 5), "the half-sent request's connection was not closed"
    assert server.bodies == []


async def test_a_writer_cancelled_before_its_task_first_ran_still_closes_the_connection(server: RawServer) -> None:
    loop = asyncio.get_running_loop()
    factory = eager_body_factory(None)
    writers: list[asyncio.Future[Any]] = []

    def cancel_at_once(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        made = factory(loop, coro, **kwargs)
        if getattr(coro, "__qualname__", "") == "ClientRequest.write_bytes":
            writers.append(made)
            made.cancel()  # before the loop ever runs its first step
        return made

    body = HeldBody(b"first half, ", b"never sent")
    loop.set_task_factory(cancel_at_once)
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(
                session.post(server.url, data=body.__aiter__(), headers={"Content-Length": body.length})
            )
            assert await asyncio.to_thread(server.closed.wait, 5), "the connection was left open"
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await request
    finally:
        loop.set_task_factory(None)
    (writer,) = writers
    assert writer.cancelled()
    assert server.bodies == []


async def test_the_app_installs_the_factory_while_it_serves_and_removes_it_after(data_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    app = create_app(load_settings(base_env(data_dir)))
    async with app.router.lifespan_context(app):
        installed = loop.get_task_factory()
    assert (installed is not None) is not ON_312
    assert loop.get_task_factory() is None
