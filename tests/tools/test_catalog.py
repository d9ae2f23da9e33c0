"""The catalog over the SDK's in-process server (memory streams): listing, rules, calls and their
failures, timeouts, cancellation, servers that fail to start or start slowly."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import McpError, types
from mcp.server.lowlevel import Server
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import SessionMessage

from parley.providers.base import ToolSpec
from parley.store.admin import open_database
from parley.store.db import Database
from parley.store.tenancy import Tenant
from parley.tools import InvalidArguments, ToolCatalog, parse_config
from parley.tools.config import ServerConfig
from parley.tools.servers import Backoff, Streams
from tests.tools.conftest import FAST, eventually, make_catalog, memory_connector, running
from tests.tools.tool_server import build_server

IN_PROCESS = {"command": "in-process"}
OBJECT: dict[str, Any] = {"type": "object"}


def paged_server() -> Server[Any, Any]:
    """Five tools over three pages, with every kind of annotation."""
    tools = [
        types.Tool(
            name="a", description="reads", inputSchema=OBJECT, annotations=types.ToolAnnotations(readOnlyHint=True)
        ),
        types.Tool(
            name="b",
            description="adds",
            inputSchema=OBJECT,
            annotations=types.ToolAnnotations(readOnlyHint=False, destructiveHint=False),
        ),
        types.Tool(name="c", description="writes", inputSchema=OBJECT, annotations=types.ToolAnnotations(title="C")),
        types.Tool(name="d", description=None, inputSchema={"type": "array"}),
        types.Tool(name="e", description="hidden", inputSchema=OBJECT),
    ]
    server: Server[Any, Any] = Server("paged")

    async def list_tools(request: types.ListToolsRequest) -> types.ListToolsResult:
        start = int(request.params.cursor) if request.params and request.params.cursor else 0
        more = str(start + 2) if start + 2 < len(tools) else None
        return types.ListToolsResult(tools=tools[start : start + 2], nextCursor=more)

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    return server


async def test_tools_are_listed_page_by_page_with_their_rules(db: Database) -> None:
    catalog = make_catalog(
        {
            "mem": {
                **IN_PROCESS,
                "trusted": True,
                "requireApproval": "destructive",
                "timeoutSeconds": 5,
                "tools": {"c": {"requireApproval": "never"}, "e": {"enabled": False}},
            },
            "wild": IN_PROCESS,
        },
        in_process={"mem": paged_server, "wild": paged_server},
    )
    async with running(catalog, db):
        tools = {tool.name: tool for tool in catalog.tools()}
        assert sorted(tools) == [
            "mem__a",
            "mem__b",
            "mem__c",
            "mem__d",
            "wild__a",
            "wild__b",
            "wild__c",
            "wild__d",
            "wild__e",
        ]
        rules = {name: (t.approval, t.read_only, t.destructive, t.timeout) for name, t in tools.items()}
        assert rules["mem__a"] == ("destructive", True, False, 5.0)
        assert rules["mem__b"] == ("destructive", False, False, 5.0)
        assert rules["mem__c"] == ("never", False, True, 5.0)  # destructiveHint is true unless said otherwise
        assert rules["mem__d"] == ("destructive", False, True, 5.0)
        # An untrusted server's annotations are not believed.
        assert {rules[f"wild__{n}"] for n in "abcde"} == {("always", False, True, 60.0)}
        d = tools["mem__d"]
        assert (d.server, d.tool, d.description, d.input_schema, d.blocked) == ("mem", "d", "", OBJECT, None)
        assert catalog.get("mem__e") is None
        assert catalog.get("mem__a") == tools["mem__a"]
        assert catalog.specs()[:2] == [
            ToolSpec(name="mem__a", description="reads", input_schema=OBJECT),
            ToolSpec(name="mem__b", description="adds", input_schema=OBJECT),
        ]


def growing_server(state: dict[str, Any]) -> Server[Any, Any]:
    server: Server[Any, Any] = Server("growing")

    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=name, inputSchema=OBJECT) for name in state["names"]]

    async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.ContentBlock]:
        state["names"].append(f"tool{len(state['names'])}")
        await server.request_context.session.send_tool_list_changed()
        return [types.TextContent(type="text", text="grown")]

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    server.call_tool()(call_tool)
    return server


async def test_a_list_changed_notification_lists_the_tools_again(db: Database) -> None:
    state: dict[str, Any] = {"names": ["grow"]}
    catalog = make_catalog({"g": IN_PROCESS}, in_process={"g": lambda: growing_server(state)})
    async with running(catalog, db):
        assert [tool.name for tool in catalog.tools()] == ["g__grow"]
        grow = catalog.get("g__grow")
        assert grow is not None
        assert (await catalog.call(grow, {})).text == "grown"
        await eventually(lambda: catalog.get("g__tool1"))
        assert [spec.name for spec in catalog.specs()] == ["g__grow", "g__tool1"]


async def test_calls_and_what_they_give_back(db: Database) -> None:
    catalog = make_catalog({"t": {**IN_PROCESS, "maxOutputBytes": 2048}}, in_process={"t": build_server})
    async with running(catalog, db):
        tool = catalog.get

        async def call(name: str, arguments: dict[str, Any]) -> Any:
            found = tool(f"t__{name}")
            assert found is not None
            return await catalog.call(found, arguments)

        echo = await call("echo", {"text": "héllo"})
        assert (echo.text, echo.is_error, echo.truncated) == ("héllo", False, False)
        assert echo.duration_ms >= 0
        failed = await call("fail", {"message": "no such file"})
        assert (failed.text, failed.is_error) == ("no such file", True)
        picture = await call("picture", {})
        assert picture.text == "a picture:\n[image: image/png, 12 KB]"
        structured = await call("structured", {})
        assert structured.text == '{"answer":42,"word":"héllo"}'
        big = await call("big", {"count": 5000, "text": "€"})
        assert big.truncated
        assert len(big.text.encode()) <= 2048
        assert big.text.endswith("[… output truncated: 14 KB, showing the first 2 KB]")


async def test_arguments_are_checked_against_the_tools_schema(db: Database) -> None:
    catalog = make_catalog({"t": IN_PROCESS}, in_process={"t": build_server})
    async with running(catalog, db):
        echo = catalog.get("t__echo")
        assert echo is not None
        assert catalog.parse_arguments(echo, '{"text": "hi"}') == {"text": "hi"}
        with pytest.raises(InvalidArguments) as caught:
            catalog.parse_arguments(echo, '{"text": 5}')
        assert caught.value.message == (
            "The arguments do not match the tool's input schema: at $.text: 5 is not of type 'string'."
        )


def refusing_server() -> Server[Any, Any]:
    """Lists a tool with an output schema; answers a call with a protocol error or a result that
    breaks the schema."""
    server: Server[Any, Any] = Server("refusing")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=name, inputSchema=OBJECT, outputSchema=schema) for name in ("refuse", "garble")]

    async def call(request: types.CallToolRequest) -> types.ServerResult:
        if request.params.name == "refuse":
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message="the tool is out of order"))
        return types.ServerResult(types.CallToolResult(content=[], structuredContent={"n": "many"}))

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    server.request_handlers[types.CallToolRequest] = call
    return server


async def test_protocol_errors_and_unusable_answers_are_error_outputs(db: Database) -> None:
    catalog = make_catalog({"r": IN_PROCESS}, in_process={"r": refusing_server})
    async with running(catalog, db):
        refuse, garble = catalog.get("r__refuse"), catalog.get("r__garble")
        assert refuse is not None
        assert garble is not None
        refused = await catalog.call(refuse, {})
        assert (refused.is_error, refused.text) == (
            True,
            "the tool server 'r' refused the call: the tool is out of order",
        )
        garbled = await catalog.call(garble, {})
        assert garbled.is_error
        assert garbled.text.startswith("the tool server 'r' gave an unusable answer: Invalid structured content")


async def test_a_tool_that_runs_past_its_timeout_is_cancelled(db: Database) -> None:
    events: list[str] = []
    catalog = make_catalog(
        {"t": {**IN_PROCESS, "timeoutSeconds": 0.3}}, in_process={"t": lambda: build_server(record=events.append)}
    )
    async with running(catalog, db):
        sleep = catalog.get("t__sleep")
        assert sleep is not None
        started = time.monotonic()
        output = await catalog.call(sleep, {"seconds": 30})
        assert time.monotonic() - started < 2
        assert (output.text, output.is_error) == ("the tool 'sleep' timed out after 0.3 s", True)
        assert output.duration_ms >= 300
        await eventually(lambda: "sleep cancelled" in events)
        echo = catalog.get("t__echo")
        assert echo is not None
        assert (await catalog.call(echo, {"text": "still here"})).text == "still here"


async def test_a_cancelled_call_stops_at_once_and_on_the_server(db: Database) -> None:
    events: list[str] = []
    catalog = make_catalog({"t": IN_PROCESS}, in_process={"t": lambda: build_server(record=events.append)})
    async with running(catalog, db):
        sleep = catalog.get("t__sleep")
        assert sleep is not None
        call = asyncio.create_task(catalog.call(sleep, {"seconds": 30}))
        await eventually(lambda: "sleep started" in events)
        started = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - started < 0.5
        await eventually(lambda: "sleep cancelled" in events)


async def test_a_tool_no_longer_offered_is_not_called(db: Database) -> None:
    catalog = make_catalog({"t": IN_PROCESS}, in_process={"t": build_server})
    async with running(catalog, db):
        echo = catalog.get("t__echo")
        assert echo is not None
        ghost = dataclasses.replace(echo, name="t__ghost")
        output = await catalog.call(ghost, {"text": "x"})
        assert (output.text, output.is_error) == ("the tool 't__ghost' is not offered any more", True)


def flaky_connector(failures: int, attempts: list[float]) -> Any:
    real = memory_connector({"t": build_server})

    @asynccontextmanager
    async def connect(key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        attempts.append(time.monotonic())
        if len(attempts) <= failures:
            raise ConnectionRefusedError("connection refused")
        async with real(key, config) as streams:
            yield streams

    return connect


async def test_a_server_that_fails_to_start_is_tried_again_with_growing_pauses(db: Database) -> None:
    attempts: list[float] = []
    config = parse_config({"mcpServers": {"t": IN_PROCESS}}, production=False, allowed_hosts=())
    catalog = ToolCatalog(config, connect=flaky_connector(3, attempts), backoff=FAST)
    async with running(catalog, db, wait=0.01):
        [server] = catalog.describe().servers
        assert server.state in ("starting", "restarting")
        await eventually(lambda: catalog.get("t__echo"))
        echo = catalog.get("t__echo")
        assert echo is not None
        assert (await catalog.call(echo, {"text": "up"})).text == "up"
        pauses = [round(b - a, 2) for a, b in itertools.pairwise(attempts)]
        assert len(attempts) == 4
        assert pauses[0] >= 0.04
        assert pauses[1] >= 0.09
        assert pauses[2] >= 0.19


class KillableConnector:
    """The test server in-process; `kill` ends its connection as a dying process would, and while
    `refuse` is set, starting it again fails."""

    def __init__(self) -> None:
        self.kill = asyncio.Event()
        self.refuse = False

    @asynccontextmanager
    async def __call__(self, key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        if self.refuse:
            raise ConnectionRefusedError
        self.kill.clear()
        server = build_server()
        async with (
            create_client_server_memory_streams() as (client, (server_read, server_write)),
            anyio.create_task_group() as tasks,
        ):

            async def serve() -> None:
                async with anyio.create_task_group() as serving:
                    serving.start_soon(
                        lambda: server.run(server_read, server_write, server.create_initialization_options())
                    )
                    await self.kill.wait()
                    serving.cancel_scope.cancel()
                await server_write.aclose()  # the client reads the end of the server's output

            tasks.start_soon(serve)
            try:
                yield client
            finally:
                tasks.cancel_scope.cancel()


async def test_a_server_that_goes_away_fails_calls_at_once_until_it_is_back(db: Database) -> None:
    connector = KillableConnector()
    config = parse_config({"mcpServers": {"t": IN_PROCESS}}, production=False, allowed_hosts=())
    catalog = ToolCatalog(config, connect=connector, backoff=Backoff(first=0.05, most=0.2, settled=0.0))
    async with running(catalog, db):
        echo = catalog.get("t__echo")
        assert echo is not None
        assert (await catalog.call(echo, {"text": "one"})).text == "one"
        connector.refuse = True
        connector.kill.set()
        await eventually(lambda: catalog.describe().servers[0].state == "restarting")
        assert catalog.get("t__echo") == echo  # its tools stay known, and so do their names
        started = time.monotonic()
        output = await catalog.call(echo, {"text": "two"})
        assert time.monotonic() - started < 0.5  # at once, not after a wait for the server
        assert output.is_error
        assert output.text in (
            "the tool server 't' is not running (the server process exited); it is being restarted",
            "the tool server 't' is not running (ConnectionRefusedError); it is being restarted",
        )
        rows = {row.tool.name: row for row in catalog.describe().tools}
        assert rows["t__echo"].status == "down"
        assert str(rows["t__echo"].reason).startswith("server t is down: ")
        connector.refuse = False
        await eventually(lambda: catalog.describe().servers[0].state == "running")
        assert (await catalog.call(echo, {"text": "three"})).text == "three"


async def test_a_slow_server_does_not_hold_up_the_start(db: Database) -> None:
    @asynccontextmanager
    async def slow(key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        await asyncio.sleep(60)
        raise AssertionError("never reached")
        yield  # pragma: no cover

    config = parse_config({"mcpServers": {"t": IN_PROCESS}}, production=False, allowed_hosts=())
    catalog = ToolCatalog(config, connect=slow, backoff=FAST)
    started = time.monotonic()
    await catalog.start(db, wait=0.2)
    assert time.monotonic() - started < 1
    assert catalog.describe().servers[0].state == "starting"
    assert catalog.tools() == []
    await catalog.aclose()
    assert time.monotonic() - started < 2
    assert catalog.describe().servers[0].state == "stopped"


def silent_connector() -> Any:
    """Streams to a server that never answers (nothing runs on the other end)."""

    @asynccontextmanager
    async def connect(key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        async with create_client_server_memory_streams() as (client, _):
            yield client

    return connect


async def test_a_server_that_does_not_answer_in_time_is_started_again(db: Database) -> None:
    config = parse_config({"mcpServers": {"mute": IN_PROCESS}}, production=False, allowed_hosts=())
    catalog = ToolCatalog(config, connect=silent_connector(), backoff=FAST, start_timeout=0.2)
    async with running(catalog, db, wait=5):
        [server] = catalog.describe().servers
        assert (server.state, server.error) == ("restarting", "it did not answer within 0.2 s")


async def test_a_server_without_tools_runs_with_none(db: Database) -> None:
    catalog = make_catalog({"bare": IN_PROCESS}, in_process={"bare": lambda: Server("bare")})
    async with running(catalog, db):
        assert catalog.describe().servers[0].state == "running"
        assert catalog.tools() == []


def listing_server(pages: int, names: list[str]) -> Server[Any, Any]:
    """Lists `names` on every page, and a cursor for the next page while pages remain."""
    server: Server[Any, Any] = Server("listing")

    async def list_tools(request: types.ListToolsRequest) -> types.ListToolsResult:
        page = int(request.params.cursor) if request.params and request.params.cursor else 0
        tools = [types.Tool(name=f"{name}{page if pages > 1 else ''}", inputSchema=OBJECT) for name in names]
        return types.ListToolsResult(tools=tools, nextCursor=str(page + 1) if page + 1 < pages else None)

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    return server


async def test_a_tool_listed_twice_is_kept_once(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    catalog = make_catalog({"twice": IN_PROCESS}, in_process={"twice": lambda: listing_server(1, ["a", "a", "b"])})
    async with running(catalog, db):
        assert [tool.name for tool in catalog.tools()] == ["twice__a", "twice__b"]
    assert "a tool server lists the tool 'a' twice; the first is kept" in caplog.text


async def test_a_listing_that_keeps_paging_is_cut_off(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    catalog = make_catalog({"pager": IN_PROCESS}, in_process={"pager": lambda: listing_server(10**6, ["t"])})
    async with running(catalog, db, wait=30):
        assert len(catalog.tools()) == 100
    assert "a tool server kept paging its tool list; the first 100 pages are kept" in caplog.text


def moody_server(state: dict[str, Any]) -> Server[Any, Any]:
    """The test server, whose listings fail while `state["refuse"]` is set."""
    server = build_server()
    list_tools = server.request_handlers[types.ListToolsRequest]

    async def moody(request: types.ListToolsRequest) -> types.ServerResult:
        if state["refuse"]:
            raise McpError(types.ErrorData(code=types.INTERNAL_ERROR, message="the tool index is rebuilding"))
        return await list_tools(request)

    server.request_handlers[types.ListToolsRequest] = moody
    return server


async def test_a_listing_that_fails_after_a_change_starts_the_server_again(db: Database) -> None:
    state = {"refuse": False}
    catalog = make_catalog({"m": IN_PROCESS}, in_process={"m": lambda: moody_server(state)})
    async with running(catalog, db):
        announce = catalog.get("m__announce")
        assert announce is not None
        state["refuse"] = True
        await catalog.call(announce, {})
        row = await eventually(lambda: (found := catalog.describe().servers[0]).error and found)
        assert row.error == "it answered with an error: the tool index is rebuilding"
        assert catalog.get("m__announce") == announce  # the last listing stands meanwhile
        state["refuse"] = False
        await eventually(lambda: catalog.describe().servers[0].state == "running")


async def test_approving_while_a_listing_fails_approves_the_last_listing(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    state = {"refuse": False}
    catalog = make_catalog({"m": IN_PROCESS}, in_process={"m": lambda: moody_server(state)})
    async with running(catalog, db):
        state["refuse"] = True
        assert await catalog.approve(db, ["m__echo"]) == ["m__echo"]
    assert "tool server m could not list its tools again: it answered with an error" in caplog.text


class FreezingConnector:
    """The test server in-process; once `freeze` is set, nothing more is read from the client,
    so that requests pile up and then cannot even be written."""

    def __init__(self) -> None:
        self.freeze = asyncio.Event()

    @asynccontextmanager
    async def __call__(self, key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        server = build_server()
        inner_send, inner_read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        async with (
            create_client_server_memory_streams() as (client, (server_read, server_write)),
            anyio.create_task_group() as tasks,
        ):

            async def pump() -> None:
                async with inner_send:
                    async for message in server_read:
                        if self.freeze.is_set():
                            await anyio.sleep_forever()
                        await inner_send.send(message)

            tasks.start_soon(pump)
            tasks.start_soon(lambda: server.run(inner_read, server_write, server.create_initialization_options()))
            try:
                yield client
            finally:
                tasks.cancel_scope.cancel()


async def test_a_call_that_cannot_even_be_sent_times_out_too(db: Database) -> None:
    connector = FreezingConnector()
    config = parse_config(
        {"mcpServers": {"t": {**IN_PROCESS, "timeoutSeconds": 0.2}}}, production=False, allowed_hosts=()
    )
    catalog = ToolCatalog(config, connect=connector, backoff=FAST)
    async with running(catalog, db):
        echo = catalog.get("t__echo")
        assert echo is not None
        connector.freeze.set()
        for _ in range(4):  # the first requests fill the streams; the next cannot be written at all
            started = time.monotonic()
            output = await catalog.call(echo, {"text": "x"})
            assert output.text == "the tool 'echo' timed out after 0.2 s"
            assert time.monotonic() - started < 2
        await catalog.aclose(grace=0.5)


def hanging_connector() -> Any:
    """The test server in-process, whose transport takes a minute to close."""
    real = memory_connector({"t": build_server})

    @asynccontextmanager
    async def connect(key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        async with real(key, config) as streams:
            try:
                yield streams
            finally:
                await asyncio.sleep(60)

    return connect


async def test_a_server_that_does_not_close_in_time_is_cut_off(db: Database) -> None:
    config = parse_config({"mcpServers": {"t": IN_PROCESS}}, production=False, allowed_hosts=())
    catalog = ToolCatalog(config, connect=hanging_connector(), backoff=FAST)
    await catalog.start(db)
    echo = catalog.get("t__echo")
    assert echo is not None
    started = time.monotonic()
    await catalog.aclose(grace=0.2)
    assert time.monotonic() - started < 1
    assert catalog.describe().servers[0].state == "stopped"
    output = await catalog.call(echo, {"text": "x"})
    assert (output.is_error, output.text) == (True, "the tool server 't' is stopped")


async def test_a_catalog_never_started_closes() -> None:
    catalog = make_catalog({"t": IN_PROCESS}, in_process={"t": build_server})
    await catalog.aclose()
    assert catalog.describe().servers[0].state == "stopped"


async def test_tools_seen_while_the_database_is_busy_are_pinned_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "busy.db"
    migrated = await open_database(f"sqlite+aiosqlite:///{path}")
    await migrated.dispose()
    db = Database(f"sqlite+aiosqlite:///{path}", pool_timeout=0.2)
    async with db.unit(Tenant.system(), readonly=True):
        pass  # connected, in WAL mode: reads go on beside another process's writing
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        catalog = make_catalog({"t": IN_PROCESS}, in_process={"t": build_server})
        async with running(catalog, db):
            assert "could not pin the tools seen for the first time" in caplog.text
            assert {row.status for row in catalog.describe().tools} == {"new"}
            assert len(catalog.specs()) == len(catalog.tools())  # trusted on first use all the same
            locker.execute("ROLLBACK")
            await catalog.refresh_pins(db)
            assert {row.status for row in catalog.describe().tools} == {"ok"}
    finally:
        locker.close()
        await db.dispose()


async def test_a_failure_to_take_in_a_listing_does_not_stop_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "parley.db"
    db = await open_database(f"sqlite+aiosqlite:///{path}")
    state: dict[str, Any] = {"names": ["grow"]}
    catalog = make_catalog({"g": IN_PROCESS}, in_process={"g": lambda: growing_server(state)})
    try:
        async with running(catalog, db):
            with sqlite3.connect(path) as schema:
                schema.execute("DROP TABLE ai_tool_definitions")  # a store that has lost its table
            grow = catalog.get("g__grow")
            assert grow is not None
            assert (await catalog.call(grow, {})).text == "grown"
            await eventually(lambda: "the tools of server g could not be taken in" in caplog.text)
            assert catalog.describe().servers[0].state == "running"
            assert (await catalog.call(grow, {})).text == "grown"
    finally:
        await db.dispose()
