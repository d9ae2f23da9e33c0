"""The demo tool server as a client meets it: a real process on stdio, the SDK's real client.

One server serves the module; tests that need a server of their own (another data directory,
the environment variable, raw bytes on stdin) start one. The last test drives the same server
in-process through the SDK's memory transport, to reach the failures a process cannot be made
to have from outside.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.memory import create_connected_server_and_client_session

import parley
from parley.local.demo_tools.notes import NoteBook
from parley.local.demo_tools.server import build_server
from parley.local.demo_tools.tools import DemoTools

pytestmark = pytest.mark.asyncio(loop_scope="module")

SOURCE_DIR = str(Path(parley.__file__).resolve().parents[1])
TOOL_NAMES = ["now", "calculate", "add_note", "list_notes", "search_notes"]
READ_ONLY = {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False}
APPENDS = {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": False, "openWorldHint": False}


@asynccontextmanager
async def demo_server(args: list[str], errlog: Path, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "parley.local.demo_tools", *args],
        env={"PYTHONPATH": SOURCE_DIR, **(env or {})},
    )
    with errlog.open("w") as stderr:
        async with (
            stdio_client(parameters, errlog=stderr) as (read, write),
            ClientSession(read, write, read_timeout_seconds=timedelta(seconds=20)) as session,
        ):
            await session.initialize()
            yield session


@dataclass
class RunningServer:
    session: ClientSession
    data_dir: Path

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> types.CallToolResult:
        return await self.session.call_tool(name, arguments or {})


def text_of(result: types.CallToolResult) -> str:
    [content] = result.content
    assert isinstance(content, types.TextContent)
    return content.text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    root = tmp_path_factory.mktemp("demo-tools")
    data_dir = root / "not" / "yet" / "there"
    ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    # The client's task group must be left by the task that entered it, and a fixture's set-up
    # and tear-down run in different tasks: one task holds the connection open for the module.
    async def hold() -> None:
        try:
            async with demo_server(["--data-dir", str(data_dir)], root / "stderr.log") as session:
                ready.set_result(session)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    holder = asyncio.create_task(hold())
    session = await ready
    yield RunningServer(session=session, data_dir=data_dir)
    stop.set()
    await holder


async def test_the_server_lists_its_tools_with_schemas_and_annotations(server: RunningServer) -> None:
    listed = await server.session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert list(tools) == TOOL_NAMES

    for tool in tools.values():
        assert tool.description, tool.name
        assert tool.title, tool.name
        assert tool.inputSchema["type"] == "object"
        assert tool.inputSchema["additionalProperties"] is False
        for name, schema in tool.inputSchema["properties"].items():
            assert schema["description"], f"{tool.name}.{name}"
        assert tool.outputSchema is not None
        assert tool.outputSchema["type"] == "object"
        assert tool.annotations is not None
        assert tool.annotations.title == tool.title

    required = {name: tool.inputSchema["required"] for name, tool in tools.items()}
    assert required == {
        "now": [],
        "calculate": ["expression"],
        "add_note": ["text"],
        "list_notes": [],
        "search_notes": ["query"],
    }
    assert tools["calculate"].inputSchema["properties"]["expression"]["maxLength"] == 500
    assert tools["now"].inputSchema["properties"]["timezone"]["default"] == "UTC"

    hints = {name: tool.annotations.model_dump(exclude={"title"}) for name, tool in tools.items() if tool.annotations}
    assert hints == {
        "now": READ_ONLY,
        "calculate": READ_ONLY,
        "add_note": APPENDS,
        "list_notes": READ_ONLY,
        "search_notes": READ_ONLY,
    }


async def test_now_tells_the_time_in_utc_by_default_and_in_any_zone(server: RunningServer) -> None:
    result = await server.call("now")
    assert not result.isError
    assert result.structuredContent is not None
    moment = datetime.fromisoformat(result.structuredContent["datetime"])
    assert abs(moment - datetime.now(UTC)) < timedelta(seconds=30)
    assert (result.structuredContent["timezone"], result.structuredContent["utc_offset"]) == ("UTC", "+00:00")
    assert text_of(result).startswith(result.structuredContent["datetime"])

    kolkata = await server.call("now", {"timezone": "Asia/Kolkata"})  # no daylight saving time
    assert kolkata.structuredContent is not None
    assert kolkata.structuredContent["datetime"].endswith("+05:30")
    assert (kolkata.structuredContent["abbreviation"], kolkata.structuredContent["utc_offset"]) == ("IST", "+05:30")

    new_york = await server.call("now", {"timezone": "america/new_york"})  # any capitalization
    assert new_york.structuredContent is not None
    assert new_york.structuredContent["timezone"] == "America/New_York"
    local = datetime.fromisoformat(new_york.structuredContent["datetime"])
    assert local.utcoffset() == local.astimezone(ZoneInfo("America/New_York")).utcoffset()
    assert new_york.structuredContent["weekday"] == local.strftime("%A")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe", "../../etc/passwd", " "])
async def test_now_refuses_an_unknown_zone_with_examples(server: RunningServer, zone: str) -> None:
    result = await server.call("now", {"timezone": zone})
    assert result.isError
    assert text_of(result).startswith("unknown time zone")
    assert "'Europe/Paris'" in text_of(result)


async def test_calculate_shows_the_expression_and_the_value(server: RunningServer) -> None:
    result = await server.call("calculate", {"expression": "(1 + 2) * 3 ** 2 - 1/4"})
    assert not result.isError
    assert text_of(result) == "(1 + 2) * 3 ** 2 - 1/4 = 26.75"
    assert result.structuredContent == {
        "expression": "(1 + 2) * 3 ** 2 - 1/4",
        "value": "26.75",
        "decimal": "26.75",
        "exact": True,
    }

    root = await server.call("calculate", {"expression": "sqrt(2)"})
    assert text_of(root) == "sqrt(2) ≈ 1.41421356237309504880168872421"
    assert root.structuredContent is not None
    assert root.structuredContent["exact"] is False


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 + )", "unexpected ')' at position 5"),
        ("10 / (5 - 5)", "division by zero at position 4"),
        ("9 ** 9 ** 9", "result too large (more than 1000 digits) at position 3"),
    ],
)
async def test_calculate_reports_errors_as_tool_errors(server: RunningServer, expression: str, message: str) -> None:
    result = await server.call("calculate", {"expression": expression})
    assert result.isError
    assert text_of(result) == message


async def test_a_note_added_is_in_the_file_and_found_by_search(server: RunningServer) -> None:
    before = await server.call("list_notes")
    assert before.structuredContent is not None

    added = await server.call("add_note", {"text": "Buy oat MILK and bread", "title": "  Shopping\n list "})
    assert not added.isError
    note = added.structuredContent
    assert note is not None
    assert (note["title"], note["text"]) == ("Shopping list", "Buy oat MILK and bread")
    assert text_of(added) == f"Saved note {note['id']} titled 'Shopping list' at {note['created_at']}."
    other = await server.call("add_note", {"text": "Call the plumber"})
    assert other.structuredContent is not None
    assert other.structuredContent["title"] is None

    lines = (server.data_dir / "notes.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-2]) == note  # the directory was made, the note written as one line
    assert json.loads(lines[-1]) == other.structuredContent

    found = await server.call("search_notes", {"query": "oat milk"})  # case-insensitive
    assert found.structuredContent is not None
    assert found.structuredContent["notes"] == [note]
    assert text_of(found).startswith("1 note matching 'oat milk':")
    assert (await server.call("search_notes", {"query": "shopping LIST"})).structuredContent == found.structuredContent

    latest = await server.call("list_notes", {"limit": 2})
    assert latest.structuredContent is not None
    assert latest.structuredContent["notes"] == [other.structuredContent, note]  # newest first
    assert latest.structuredContent["total"] == before.structuredContent["total"] + 2

    nothing = await server.call("search_notes", {"query": "no such words anywhere"})
    assert not nothing.isError
    assert text_of(nothing) == "No note matches 'no such words anywhere'."


async def test_unreadable_lines_of_the_notes_file_are_skipped(server: RunningServer) -> None:
    await server.call("add_note", {"text": "written before the damage"})
    before = await server.call("list_notes", {"limit": 100})
    assert before.structuredContent is not None
    with (server.data_dir / "notes.jsonl").open("ab") as file:
        file.write(b"not json at all\n")
        file.write(b'["a list", "not a note"]\n')
        file.write(b'{"id": 1, "created_at": "2025-01-01T00:00:00+00:00", "title": null, "text": "bad id"}\n')
        file.write(b'{"id": "x", "created_at": "t", "title": null, "text": "\xff\xfe"}\n')
        file.write(b'{"id": "torn", "created_at": "2025-')  # a write cut short, with no newline

    after_damage = await server.call("add_note", {"text": "written after the damage"})
    assert not after_damage.isError
    listed = await server.call("list_notes", {"limit": 100})
    assert not listed.isError
    assert listed.structuredContent is not None
    assert listed.structuredContent["skipped_lines"] == before.structuredContent["skipped_lines"] + 5
    assert listed.structuredContent["notes"][0] == after_damage.structuredContent  # not glued to the torn line
    assert listed.structuredContent["notes"][1:] == before.structuredContent["notes"][:99]
    assert "unreadable lines of the notes file skipped" in text_of(listed)


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("calculate", {"expression": 5}, "Input validation error: 5 is not of type 'string'"),
        ("calculate", {}, "Input validation error: 'expression' is a required property"),
        ("calculate", {"expression": "1+" * 300 + "1"}, "Input validation error: "),
        ("add_note", {"text": "x", "tag": "y"}, "Input validation error: Additional properties are not allowed"),
        ("add_note", {"text": "x" * 4001}, "Input validation error: "),
        ("add_note", {"text": "   "}, "the note's text is empty"),
        ("list_notes", {"limit": 0}, "Input validation error: 0 is less than the minimum of 1"),
        ("list_notes", {"limit": "ten"}, "Input validation error: 'ten' is not of type 'integer'"),
        ("search_notes", {"query": ""}, "Input validation error: "),
        ("rm", {"path": "/"}, "unknown tool 'rm'; this server has: now, calculate, add_note, list_notes, search_notes"),
    ],
)
async def test_bad_calls_are_tool_errors_and_the_server_lives_on(
    server: RunningServer, name: str, arguments: dict[str, Any], message: str
) -> None:
    result = await server.call(name, arguments)
    assert result.isError
    assert text_of(result).startswith(message)
    assert text_of(await server.call("calculate", {"expression": "6 * 7"})) == "6 * 7 = 42"


async def test_concurrent_calls_are_all_answered(server: RunningServer) -> None:
    results = await asyncio.gather(*(server.call("calculate", {"expression": f"{n} ** 2"}) for n in range(20)))
    assert [result.structuredContent["value"] for result in results if result.structuredContent] == [
        str(n**2) for n in range(20)
    ]


async def test_the_data_directory_may_come_from_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    async with demo_server([], tmp_path / "stderr.log", env={"PARLEY_DEMO_TOOLS_DIR": str(data_dir)}) as session:
        result = await session.call_tool("add_note", {"text": "kept where the environment says"})
        assert not result.isError
    assert "kept where the environment says" in (data_dir / "notes.jsonl").read_text(encoding="utf-8")


async def test_without_a_data_directory_the_command_refuses_to_start() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.local.demo_tools",
        env={"PYTHONPATH": SOURCE_DIR},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert "give --data-dir DIR or set PARLEY_DEMO_TOOLS_DIR" in stderr.decode()
    assert stdout == b""


async def test_garbage_on_stdin_does_not_stop_the_server(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley.local.demo_tools",
        "--data-dir",
        str(tmp_path),
        env={"PYTHONPATH": SOURCE_DIR},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    messages = [
        b"this is not json\n",
        b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": ' + json.dumps(hello).encode() + b"}\n",
        b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n',
        b"\xff\xfe{{{\n",
        b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "calculate", '
        b'"arguments": {"expression": "2 ** 10"}}}\n',
    ]
    process.stdin.write(b"".join(messages))
    await process.stdin.drain()

    answers: dict[int, Any] = {}
    while 2 not in answers:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        assert line, "the server closed stdout"
        message = json.loads(line)
        if "id" in message:
            answers[message["id"]] = message
    assert answers[1]["result"]["serverInfo"]["name"] == "parley-demo"
    assert answers[2]["result"]["structuredContent"]["value"] == "1024"

    process.stdin.close()  # end of input ends the server, cleanly
    assert await asyncio.wait_for(process.wait(), timeout=20) == 0


class FailingTools(DemoTools):
    """A tool set with a bug, to see the server report it rather than die."""

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        if name == "now":
            raise RuntimeError("a bug with private details")
        return super().call(name, arguments)


async def test_failures_inside_a_tool_are_tool_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "notes.jsonl").mkdir()  # a notes "file" that cannot be opened as one
    server = build_server(FailingTools(NoteBook(tmp_path)))
    async with create_connected_server_and_client_session(server) as session:
        broken = await session.call_tool("now", {})
        assert broken.isError
        assert text_of(broken) == "internal error in the tool 'now'; the server's log has the details"
        assert "private details" in caplog.text

        unsaved = await session.call_tool("add_note", {"text": "nowhere to go"})
        assert unsaved.isError
        assert text_of(unsaved) == "could not save the note: Is a directory"
        unread = await session.call_tool("list_notes", {})
        assert unread.isError
        assert text_of(unread) == "could not read the notes: Is a directory"

        assert text_of(await session.call_tool("calculate", {"expression": "1 + 1"})) == "1 + 1 = 2"
