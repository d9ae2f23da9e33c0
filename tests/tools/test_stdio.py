"""Tool servers as child processes on stdio: the demo tool server, the children's environment and
stderr, a child that dies, one that cannot start, one that starts slowly, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from parley.store.db import Database
from parley.tools import CatalogTool, ToolCatalog, demo_config, parse_config
from parley.tools.servers import Backoff
from tests.tools.conftest import FAST, eventually, make_catalog, running, stdio_entry


def tool(catalog: ToolCatalog, name: str) -> CatalogTool:
    found = catalog.get(name)
    assert found is not None, f"{name} not in {[t.name for t in catalog.tools()]}"
    return found


async def test_the_demo_tool_server(db: Database, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    config = parse_config(demo_config(notes), production=True, allowed_hosts=())
    async with running(ToolCatalog(config, backoff=FAST), db, wait=30) as catalog:
        rules = {t.name: (t.approval, t.read_only, t.destructive) for t in catalog.tools()}
        assert rules == {
            "demo__add_note": ("destructive", False, False),
            "demo__calculate": ("destructive", True, False),
            "demo__list_notes": ("destructive", True, False),
            "demo__now": ("destructive", True, False),
            "demo__search_notes": ("destructive", True, False),
        }
        calculate = tool(catalog, "demo__calculate")
        output = await catalog.call(calculate, catalog.parse_arguments(calculate, '{"expression": "(1 + 2) * 3"}'))
        assert (output.text, output.is_error) == ("(1 + 2) * 3 = 9", False)

        add_note = tool(catalog, "demo__add_note")
        saved = await catalog.call(add_note, {"text": "buy milk", "title": "errands"})
        assert saved.text.startswith("Saved note ")
        [line] = (notes / "notes.jsonl").read_text().splitlines()
        assert (json.loads(line)["text"], json.loads(line)["title"]) == ("buy milk", "errands")
        listed = await catalog.call(tool(catalog, "demo__list_notes"), {})
        assert "1 note in all:" in listed.text
        assert "buy milk" in listed.text
        refused = await catalog.call(calculate, {"expression": "1 +"})
        assert (refused.is_error, refused.text) == (True, "unexpected end of expression at position 4")


async def test_children_get_a_small_environment_and_never_parleys_secrets(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_LLM_API_KEY", "sk-secret")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://parley:pw@db/parley")
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://:pw@cache")
    monkeypatch.setenv("LANG", "C.UTF-8")
    catalog = make_catalog({"t": stdio_entry(env={"TOOL_TOKEN": "for the tool"})})
    async with running(catalog, db, wait=30):
        output = await catalog.call(tool(catalog, "t__environment"), {})
    environment = json.loads(output.text)
    assert environment["TOOL_TOKEN"] == "for the tool"
    assert environment["LANG"] == "C.UTF-8"
    assert environment["PATH"] == os.environ["PATH"]
    assert not [name for name in environment if name.startswith(("MCP_", "PARLEY_", "ANTHROPIC_", "DATABASE_"))]
    assert set(environment) <= {"TOOL_TOKEN", "PATH", "HOME", "LANG", "LOGNAME", "SHELL", "TERM", "USER", "LC_CTYPE"}


async def test_a_childs_stderr_goes_to_the_log_line_by_line(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parley.tools.stderr")
    catalog = make_catalog({"chatty": stdio_entry()})
    async with running(catalog, db, wait=30):
        pid = (await catalog.call(tool(catalog, "chatty__pid"), {})).text
    records = [r for r in caplog.records if r.name == "parley.tools.stderr"]
    assert [r.getMessage() for r in records] == [f"[chatty] tool server {pid} starting"]


async def test_a_child_that_dies_is_started_again(db: Database) -> None:
    catalog = make_catalog({"t": stdio_entry()}, backoff=Backoff(first=1.0, most=1.0))
    async with running(catalog, db, wait=30):
        pid = int((await catalog.call(tool(catalog, "t__pid"), {})).text)
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: catalog.describe().servers[0].state == "restarting")
        started = time.monotonic()
        output = await catalog.call(tool(catalog, "t__echo"), {"text": "anyone?"})
        assert time.monotonic() - started < 0.5  # at once: well inside the one-second backoff
        assert (output.is_error, output.text) == (
            True,
            "the tool server 't' is not running (the server process exited); it is being restarted",
        )
        await eventually(lambda: catalog.describe().servers[0].state == "running")
        assert int((await catalog.call(tool(catalog, "t__pid"), {})).text) != pid
        assert (await catalog.call(tool(catalog, "t__echo"), {"text": "back"})).text == "back"


async def test_a_command_that_cannot_start_leaves_the_server_down_with_the_reason(db: Database) -> None:
    catalog = make_catalog({"gone": {"command": "/nonexistent/tool-server"}, "t": stdio_entry()})
    async with running(catalog, db, wait=30):
        servers = {row.key: row for row in catalog.describe().servers}
        assert servers["gone"].state == "restarting"
        assert servers["gone"].error == (
            "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/tool-server'"
        )
        assert servers["t"].state == "running"
        assert {t.server for t in catalog.tools()} == {"t"}


async def test_a_slow_child_does_not_hold_up_the_start(db: Database) -> None:
    catalog = make_catalog({"slow": stdio_entry("--slow-start", "3")})
    started = time.monotonic()
    async with running(catalog, db, wait=0.3):
        assert time.monotonic() - started < 2
        assert catalog.describe().servers[0].state == "starting"
        await eventually(lambda: catalog.get("slow__echo"))


async def test_a_timeout_cancels_the_call_in_the_child(db: Database, tmp_path: Path) -> None:
    events = tmp_path / "events"
    catalog = make_catalog({"t": stdio_entry("--events", str(events), timeoutSeconds=0.5)})
    async with running(catalog, db, wait=30):
        output = await catalog.call(tool(catalog, "t__sleep"), {"seconds": 30})
        assert (output.is_error, output.text) == (True, "the tool 'sleep' timed out after 0.5 s")
        await eventually(lambda: events.exists() and "sleep cancelled" in events.read_text())


async def test_closing_the_catalog_ends_the_children(db: Database) -> None:
    catalog = make_catalog({"a": stdio_entry(), "b": stdio_entry()})
    await catalog.start(db, wait=30)
    pids = [int((await catalog.call(tool(catalog, f"{key}__pid"), {})).text) for key in "ab"]
    started = time.monotonic()
    await catalog.aclose()
    assert time.monotonic() - started < 5
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert {row.state for row in catalog.describe().servers} == {"stopped"}


async def test_a_child_killed_during_a_call_ends_the_call_with_the_reason(db: Database) -> None:
    catalog = make_catalog({"t": stdio_entry()}, backoff=Backoff(first=1.0, most=1.0))
    async with running(catalog, db, wait=30):
        pid = int((await catalog.call(tool(catalog, "t__pid"), {})).text)
        call = asyncio.create_task(catalog.call(tool(catalog, "t__sleep"), {"seconds": 30}))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        output = await asyncio.wait_for(call, 5)
        assert (output.is_error, output.text) == (
            True,
            "the tool server 't' stopped during the call; it is being restarted",
        )


async def test_a_line_that_is_not_json_rpc_is_logged_and_skipped(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = make_catalog({"noisy": stdio_entry("--garbage")})
    async with running(catalog, db, wait=30):
        assert (await catalog.call(tool(catalog, "noisy__echo"), {"text": "fine"})).text == "fine"
    assert "tool server noisy sent something unreadable" in caplog.text


async def test_a_very_long_stderr_line_is_logged_in_pieces(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="parley.tools.stderr")
    catalog = make_catalog({"t": stdio_entry()})
    async with running(catalog, db, wait=30):
        await catalog.call(tool(catalog, "t__shout"), {"text": "x" * 100_000 + "\nend"})
        await eventually(lambda: any(r.getMessage() == "[t] end" for r in caplog.records))
    pieces = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[t] x")]
    assert len(pieces) >= 2  # a line longer than the pipe delivers at once is logged as it comes
    assert all(len(piece) <= 4 + 4000 for piece in pieces)
