"""One supervisor task per tool server: it connects, lists the tools, lists them again when the
server says they changed, and starts the server again when it goes away.

The SDK's transports and session are anyio context managers, entered and left by the supervisor
task alone. Between the transport and the session sits a relay that notices when the server's
messages end (a stdio child that exits; an HTTP transport that fails ends the connection with
its error instead). A lost server is started again after a pause that doubles from
`Backoff.first` up to `Backoff.most`; meanwhile calls fail at once with a reason.

Calls come from any task and go through the live session, bounded by the tool's timeout (the
SDK's read timeout, and `asyncio.timeout` around it). A call that times out or whose caller is
cancelled is cancelled on the server too (`notifications/cancelled`).

Children on stdio get a small environment: PATH, HOME and LANG (and the few variables the SDK
adds, none of them a secret) plus the server's configured `env`, never parley's own settings or
keys. Their stderr goes to the log (`parley.tools.stderr`) line by line under the server's key.
HTTP servers get their configured headers and nothing of the person or request a call is for.

Imports: standard library, anyio, mcp, parley (its version), parley.tools.config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, McpError, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.message import SessionMessage
from mcp.shared.session import RequestResponder

import parley
from parley.tools.config import HttpServer, ServerConfig, StdioServer

log = logging.getLogger("parley.tools")
stderr_log = logging.getLogger("parley.tools.stderr")

ReadStream = MemoryObjectReceiveStream[SessionMessage | Exception]
WriteStream = MemoryObjectSendStream[SessionMessage]
Streams = tuple[ReadStream, WriteStream]
Connector = Callable[[str, ServerConfig], AbstractAsyncContextManager[Streams]]
ServerState = Literal["starting", "running", "restarting", "stopped"]

INHERITED_VARIABLES = ("PATH", "HOME", "LANG")
START_TIMEOUT = 30.0  # seconds for a server to answer `initialize`, or to list its tools
CALL_SLACK = 1.0  # the outer bound on a call, past the SDK's own read timeout
_CLIENT = types.Implementation(name="parley", version=parley.__version__)
_MAX_PAGES = 100  # of a tool listing: a server that keeps answering with cursors is cut off
_MAX_STDERR_LINE = 4000


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses before starting a lost server again: `first`, doubled each time up to `most`; back
    to `first` once a connection has lasted `settled` seconds."""

    first: float = 0.5
    most: float = 30.0
    settled: float = 30.0


DEFAULT_BACKOFF = Backoff()


class CallError(Exception):
    """A call that did not reach the tool or did not come back; `message` says so to people and
    the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Connection:
    __slots__ = ("closed", "session")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.closed = asyncio.Event()


class ToolServer:
    """A configured server, its supervisor task and, while it runs, its session."""

    def __init__(
        self,
        key: str,
        config: ServerConfig,
        *,
        connect: Connector,
        on_tools: Callable[[ToolServer], Awaitable[None]],
        backoff: Backoff,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.key = key
        self.config = config
        self.state: ServerState = "starting"
        self.error: str | None = None  # why it is not running
        self.tools: list[types.Tool] = []  # as last listed
        self.first_attempt = asyncio.Event()  # set once the first start succeeded or failed
        self._connect = connect
        self._on_tools = on_tools
        self._backoff = backoff
        self._start_timeout = start_timeout
        self._connection: _Connection | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._relist = False
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._connection is not None and not self._connection.closed.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"tool server {self.key}")

    async def stop(self, grace: float = 5.0) -> None:
        """Close the session (a stdio child has its stdin closed, then is terminated, then killed)."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None:
            if not self.running:
                task.cancel()  # starting or pausing: nothing to close politely
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        for background in list(self._background):
            background.cancel()
        if self._background:
            await asyncio.wait(self._background)
        self.state = "stopped"

    async def relist(self) -> None:
        """List the tools again now, if the server runs; a listing that fails leaves the last one."""
        connection = self._connection
        if connection is None:
            return
        try:
            with anyio.fail_after(self._start_timeout):
                tools = await _list_tools(connection.session)
        except Exception as exc:
            log.warning("tool server %s could not list its tools again: %s", self.key, self._reason(exc))
            return
        await self._publish(tools)

    # -- calls -------------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any], *, time_limit: float) -> types.CallToolResult:
        """The server's result for one call; `CallError` when there is none. Cancelling the caller
        cancels the call on the server too."""
        connection = self._connection
        if connection is None or connection.closed.is_set():
            raise CallError(self._unavailable())
        request_ids: list[int] = []
        request = asyncio.ensure_future(_call_tool(connection.session, tool, arguments, time_limit, request_ids))
        closed = asyncio.ensure_future(connection.closed.wait())
        try:
            async with asyncio.timeout(time_limit + CALL_SLACK):
                await asyncio.wait((request, closed), return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            self._cancel_on_server(connection, request_ids, "timed out")
            raise CallError(_timed_out(tool, time_limit)) from None
        except asyncio.CancelledError:
            self._cancel_on_server(connection, request_ids, "cancelled by the client")
            raise
        finally:
            closed.cancel()
            if not request.done():
                request.cancel()
                request.add_done_callback(_ignore_outcome)
        if not request.done():
            raise CallError(f"the tool server {self.key!r} stopped during the call; it is being restarted")
        try:
            return request.result()
        except McpError as exc:
            if exc.error.code == HTTPStatus.REQUEST_TIMEOUT:  # the SDK's read timeout
                self._cancel_on_server(connection, request_ids, "timed out")
                raise CallError(_timed_out(tool, time_limit)) from exc
            if exc.error.code == types.CONNECTION_CLOSED:
                raise CallError(f"the tool server {self.key!r} stopped during the call; it is being restarted") from exc
            raise CallError(f"the tool server {self.key!r} refused the call: {exc.error.message}") from exc
        except Exception as exc:  # a result that does not fit the tool's output schema, say
            raise CallError(f"the tool server {self.key!r} gave an unusable answer: {exc}") from exc

    def _cancel_on_server(self, connection: _Connection, request_ids: list[int], reason: str) -> None:
        if not request_ids or connection.closed.is_set():
            return  # never sent, or nobody left to tell
        task = asyncio.create_task(_send_cancel(connection.session, request_ids[0], reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _unavailable(self) -> str:
        if self._stopping:
            return f"the tool server {self.key!r} is stopped"
        why = f" ({self.error})" if self.error else ""
        return f"the tool server {self.key!r} is not running{why}; it is being restarted"

    # -- the supervisor ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self._backoff.first
        while not self._stopping:
            began = time.monotonic()
            try:
                await self._serve()
            except Exception as exc:
                self.error = self._reason(exc)
            if self._stopping:
                break
            self.state = "restarting"
            self.first_attempt.set()
            if time.monotonic() - began >= self._backoff.settled:
                delay = self._backoff.first
            log.warning("tool server %s is down (%s); starting it again in %.1f s", self.key, self.error, delay)
            try:
                async with asyncio.timeout(delay):
                    while not self._stopping:
                        await self._wake.wait()
                        self._wake.clear()
            except TimeoutError:
                pass
            delay = min(delay * 2, self._backoff.most)
        self.state = "stopped"

    async def _serve(self) -> None:
        """One connection, from start to loss (an exception) or stop (a return)."""
        ended = asyncio.Event()  # the server's messages have ended
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._connect(self.key, self.config))
            relay_in, relay_out = anyio.create_memory_object_stream[SessionMessage | Exception](0)
            relays = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(relays.cancel_scope.cancel)
            relays.start_soon(self._relay, read, relay_in, ended)
            session = await stack.enter_async_context(
                ClientSession(relay_out, write, message_handler=self._on_message, client_info=_CLIENT)
            )
            try:
                with anyio.fail_after(self._start_timeout):
                    await session.initialize()
                    tools = await _list_tools(session)
            except Exception:
                if ended.is_set():
                    raise _Lost(self._lost_reason()) from None
                raise
            connection = _Connection(session)
            self._connection = connection
            try:
                self.state, self.error = "running", None
                log.info("tool server %s is running with %d tools", self.key, len(tools))
                await self._publish(tools)
                self.first_attempt.set()
                await self._watch(session, ended)
            finally:
                self._connection = None
                connection.closed.set()

    async def _watch(self, session: ClientSession, ended: asyncio.Event) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            if ended.is_set():
                raise _Lost(self._lost_reason())
            if self._relist:
                self._relist = False
                with anyio.fail_after(self._start_timeout):
                    tools = await _list_tools(session)
                log.info("tool server %s changed its tools: now %d", self.key, len(tools))
                await self._publish(tools)

    async def _publish(self, tools: list[types.Tool]) -> None:
        self.tools = tools
        try:
            await self._on_tools(self)
        except Exception:  # the listing's consumer failed (its database, say): not the server's fault
            log.exception("the tools of server %s could not be taken in", self.key)

    def _lost_reason(self) -> str:
        if isinstance(self.config, StdioServer):
            return "the server process exited"
        return "the connection closed"

    def _reason(self, exc: BaseException) -> str:
        """What went wrong, in a line: the first exception inside task groups' exception groups."""
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        if isinstance(exc, _Lost):
            return str(exc)
        if isinstance(exc, TimeoutError):
            return f"it did not answer within {self._start_timeout:g} s"
        if isinstance(exc, McpError):
            return f"it answered with an error: {exc.error.message}"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _relay(
        self, source: ReadStream, sink: MemoryObjectSendStream[SessionMessage | Exception], ended: asyncio.Event
    ) -> None:
        try:
            async with source, sink:  # the relay owns both, as the session would own `source`
                async for message in source:
                    await sink.send(message)
        finally:
            ended.set()
            self._wake.set()

    async def _on_message(
        self, message: RequestResponder[types.ServerRequest, types.ClientResult] | types.ServerNotification | Exception
    ) -> None:
        # Runs in the session's receive loop: it must not wait on the session itself.
        if isinstance(message, Exception):
            log.warning("tool server %s sent something unreadable: %s", self.key, message)
        elif isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            self._relist = True
            self._wake.set()


class _Lost(Exception):
    pass


async def _call_tool(
    session: ClientSession, tool: str, arguments: dict[str, Any], time_limit: float, request_ids: list[int]
) -> types.CallToolResult:
    # The id the request is about to take (nothing runs between this line and the SDK taking it),
    # so that a call cut short can be cancelled on the server.
    request_ids.append(session._request_id)
    return await session.call_tool(tool, arguments, read_timeout_seconds=timedelta(seconds=time_limit))


async def _send_cancel(session: ClientSession, request_id: int, reason: str) -> None:
    notification = types.CancelledNotification(
        params=types.CancelledNotificationParams(requestId=request_id, reason=reason)
    )
    try:
        with anyio.fail_after(2):
            await session.send_notification(types.ClientNotification(notification))
    except Exception as exc:  # the connection went meanwhile: the call ends with it
        log.debug("could not cancel request %s on its server: %s", request_id, exc)


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    """Every tool the server offers, page after page (none when it offers no tools at all)."""
    capabilities = session.get_server_capabilities()
    if capabilities is not None and capabilities.tools is None:
        return []
    tools: dict[str, types.Tool] = {}
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        for tool in page.tools:
            if tool.name in tools:
                log.warning("a tool server lists the tool %r twice; the first is kept", tool.name)
            else:
                tools[tool.name] = tool
        cursor = page.nextCursor
        if not cursor:
            break
    else:
        log.warning("a tool server kept paging its tool list; the first %d pages are kept", _MAX_PAGES)
    return list(tools.values())


def _timed_out(tool: str, timeout: float) -> str:
    return f"the tool {tool!r} timed out after {timeout:g} s"


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not report it as never retrieved


# -- transports ------------------------------------------------------------------------------------


def child_environment(configured: dict[str, str]) -> dict[str, str]:
    """A stdio child's environment, on top of the SDK's small default one."""
    inherited = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
    return {**inherited, **configured}


@asynccontextmanager
async def open_transport(key: str, config: ServerConfig) -> AsyncIterator[Streams]:
    """The configured transport's streams: a child process on stdio, or streamable HTTP."""
    if isinstance(config, HttpServer):
        client = create_mcp_http_client(headers=dict(config.headers))
        async with client, streamable_http_client(config.url, http_client=client) as (read, write, _):
            yield read, write
        return
    parameters = StdioServerParameters(
        command=config.command, args=config.args, env=child_environment(config.env), cwd=config.cwd
    )
    async with _stderr_to_log(key) as errlog, stdio_client(parameters, errlog=errlog) as (read, write):
        errlog.close()  # the child holds its own end: the log sees the end when the child's goes
        yield read, write


@asynccontextmanager
async def _stderr_to_log(key: str) -> AsyncIterator[Any]:
    """A pipe for a child's stderr whose lines go to the log; yields the end the child writes to."""
    read_end, write_end = os.pipe()
    errlog = os.fdopen(write_end, "w")
    reader = os.fdopen(read_end, "rb", buffering=0)
    lines = _StderrLines(key)
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: lines, reader)
    except BaseException:
        errlog.close()
        reader.close()
        raise
    try:
        yield errlog
        with anyio.move_on_after(1):  # the last lines the child wrote
            await lines.finished.wait()
    finally:
        errlog.close()
        transport.close()


class _StderrLines(asyncio.Protocol):
    def __init__(self, key: str) -> None:
        self._key = key
        self._pending = b""
        self.finished = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > _MAX_STDERR_LINE:
            lines.append(self._pending)
            self._pending = b""
        for line in lines:
            self._log(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self._log(self._pending)
        self._pending = b""
        self.finished.set()

    def _log(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        if text:
            stderr_log.info("[%s] %s", self._key, text[:_MAX_STDERR_LINE])
