"""Send an upstream request's body in the step that makes the request (Python 3.11).

aiohttp writes a request's body in a task of its own (`ClientRequest.write_bytes`) and holds the
request's head back to send it with the body. From Python 3.12 on it starts that task eagerly, and
the request leaves at once. On 3.11 the task waits for the loop's next round, and the whole request
with it; under a burst of turns that round is long, since every turn admitted in the same round
runs first (docs/performance.md: the first wave's time to first token, p50 52.8 -> 44.5 ms).

`use_eager_body_writes(loop)` installs a task factory that runs the body writer's first step at
once, as 3.12's eager tasks do, and every other coroutine as before. The body writer never asks
which task it runs in; when it must wait (the socket's buffer is full), the rest of it runs in an
ordinary task. Should aiohttp rename that coroutine, the factory no longer recognises it and
requests go out one round later, as on a plain 3.11 loop.

Imports: standard library and aiohttp.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from aiohttp.client_reqrep import ClientRequest

_BODY_WRITER = getattr(getattr(ClientRequest, "write_bytes", None), "__code__", None)

TaskFactory = Callable[..., "asyncio.Future[Any]"]


def use_eager_body_writes(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Install the factory on `loop` (Python < 3.12 only); returns what puts the previous one back."""
    if sys.version_info >= (3, 12) or _BODY_WRITER is None:
        return lambda: None
    previous = loop.get_task_factory()
    loop.set_task_factory(eager_body_factory(previous))

    def restore() -> None:
        loop.set_task_factory(previous)

    return restore


def eager_body_factory(previous: TaskFactory | None) -> TaskFactory:
    """A task factory: aiohttp's body writer starts at once, anything else goes to `previous`."""

    def create(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Future[Any]:
        if getattr(coro, "cr_code", None) is not _BODY_WRITER:
            if previous is not None:
                return previous(loop, coro, **kwargs)
            return asyncio.Task(coro, loop=loop, **kwargs)
        return _start_eagerly(loop, coro, kwargs.get("context"))

    return create


def _start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None
) -> asyncio.Future[Any]:
    """Run `coro` up to its first wait; a finished future if it never waits, else a task for the rest."""
    context = context if context is not None else contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[Any] = loop.create_future()
        done.set_result(stop.value)
        return done
    except BaseException as exc:  # the same end as a task's whose coroutine raised at once
        failed: asyncio.Future[Any] = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            failed.cancel()
        else:
            failed.set_exception(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # as a task's step does
        return failed
    rest = _resume(coro, waiting_on)
    rest.send(None)  # to its first pause, so that a cancellation before the task's first step reaches `coro`
    return asyncio.Task(rest, loop=loop, context=context)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """The rest of `coro`, in a task: hands its task what it waits on, and passes back what comes."""
    try:
        yield  # where the task's first step starts
    except BaseException as exc:  # cancelled before that step
        try:
            waiting_on = coro.throw(exc)
        except StopIteration as stop:
            return stop.value
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # the task's cancellation, thrown in where `coro` waits
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting_on = coro.send(sent)
            except StopIteration as stop:
                return stop.value
