"""The catalog over the SDK's in-process server (memory streams): listing, rules, calls and their
failures, timeouts, cancellation, servers that fail to start or start slowly."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import McpError, types
from mcp.server.lowlevel import Server
from mcp.shared.memory import create_client_server_memory_streams

from parley.providers.base import ToolSpec
from parley.store.db import Database
from parley.tools import InvalidArguments, ToolCatalog, parse_config
from parley.tools.config import ServerConfig
from parley.tools.servers import Streams
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
        assert (echo.text, echo.for_model, echo.is_error, echo.truncated) == ("héllo", "héllo", False, False)
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
            raise ConnectionRefusedError("connection refused")
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
    catalog = ToolCatalog(config, connect=connector, backoff=FAST)
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
        assert time.monotonic() - started < 0.1
        assert output.is_error
        assert output.text in (
            "the tool server 't' is not running (the server process exited); it is being restarted",
            "the tool server 't' is not running (ConnectionRefusedError: connection refused); it is being restarted",
        )
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
