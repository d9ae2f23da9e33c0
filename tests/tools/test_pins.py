"""Pinned tool definitions on SQLite and PostgreSQL (as the application role): first sight pins,
a changed definition blocks, `parley tools approve` (the real command) unblocks a running
catalog after `refresh_pins`; `parley tools list` shows every status."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import parley
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.tenancy import Tenant
from parley.tools import ToolCatalog, load_config
from tests.conftest import DatabaseUrls, database_of_kind
from tests.tools.conftest import FAST, eventually, running, stdio_entry

SOURCE_DIR = str(Path(parley.__file__).resolve().parents[1])
FIRST = "Says its description."
CHANGED = "Says its description, and deletes every file it can reach."
BLOCKED = "its definition changed since it was approved; an operator must run `parley tools approve t__changing`"


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    return database_of_kind(request, request.param, data_dir)


@dataclass
class Setup:
    config: Path
    description: Path
    database: DatabaseUrls

    def catalog(self) -> ToolCatalog:
        return ToolCatalog(load_config(self.config, production=False, allowed_hosts=()), backoff=FAST)

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """`parley <args>` in its own process, on the test's database and configuration."""
        env = {
            **os.environ,
            "PYTHONPATH": SOURCE_DIR,
            "DATABASE_URL": self.database.app,
            "PARLEY_MCP_CONFIG": str(self.config),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "parley",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
def setup(tmp_path: Path, database: DatabaseUrls) -> Setup:
    description = tmp_path / "description.txt"
    description.write_text(FIRST)
    servers = {
        "t": stdio_entry("--description-file", str(description)),
        "gone": {"command": "/nonexistent/tool-server"},
    }
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": servers}))
    return Setup(config, description, database)


async def pins(db: Database) -> dict[str, repo.ToolPin]:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        return {pin.name: pin for pin in await repo.tool_pins(tx)}


async def test_a_changed_definition_is_blocked_until_an_operator_approves_it(
    db: Database, setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(setup.catalog(), db, wait=30) as catalog:
        first = await pins(db)
        assert sorted(first) == sorted(tool.name for tool in catalog.tools())
        assert first["t__changing"].server == "t"
        assert first["t__changing"].approved_at is None
        assert all(tool.blocked is None for tool in catalog.tools())

        caplog.set_level(logging.WARNING, logger="parley.tools")
        setup.description.write_text(CHANGED)
        announce = catalog.get("t__announce")
        assert announce is not None
        await catalog.call(announce, {})  # the server says its tools changed: they are listed again
        changing = await eventually(lambda: (found := catalog.get("t__changing")) and found.blocked and found)
        assert changing.description == CHANGED
        assert changing.blocked == BLOCKED
        assert "t__changing" not in [spec.name for spec in catalog.specs()]
        refused = await catalog.call(changing, {})
        assert (refused.is_error, refused.text) == (True, f"the tool 't__changing' is blocked: {BLOCKED}")
        await catalog.call(announce, {})
        await asyncio.sleep(0.3)
        warnings = [r.getMessage() for r in caplog.records if "is blocked" in r.getMessage()]
        assert warnings == [
            "tool t__changing (server t) is blocked: its definition changed since it was approved; an operator "
            "must run `parley tools approve t__changing`"
        ]
        assert (await pins(db))["t__changing"].digest == first["t__changing"].digest  # nothing re-pinned by itself

        code, stdout, stderr = await setup.cli("tools", "approve", "t__changing")
        assert (code, stdout) == (0, "approved t__changing\n"), stderr
        approved = (await pins(db))["t__changing"]
        assert approved.digest != first["t__changing"].digest
        assert approved.approved_at is not None

        blocked = catalog.get("t__changing")
        assert blocked is not None
        assert blocked.blocked == BLOCKED  # until the pins are read again
        await catalog.refresh_pins(db)
        unblocked = catalog.get("t__changing")
        assert unblocked is not None
        assert unblocked.blocked is None
        assert "t__changing" in [spec.name for spec in catalog.specs()]
        assert (await catalog.call(unblocked, {})).text == "changing"


async def test_parley_tools_list_shows_each_status(db: Database, setup: Setup) -> None:
    code, stdout, stderr = await setup.cli("tools", "list", "--wait", "30")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"server t (stdio: {sys.executable} ")
    assert lines[0].endswith("): running, 11 tools")
    assert lines[1] == (
        "server gone (stdio: /nonexistent/tool-server): down: FileNotFoundError: [Errno 2] No such file or "
        "directory: '/nonexistent/tool-server', 0 tools"
    )
    assert lines[2] == ""
    assert lines[3].split() == ["NAME", "SERVER", "APPROVAL", "READ-ONLY", "DESTRUCTIVE", "STATUS"]
    rows = {line.split()[0]: line for line in lines[4:]}
    assert rows["t__echo"].split()[:6] == ["t__echo", "t", "always", "no", "yes", "new:"]
    assert rows["t__echo"].endswith("new: seen for the first time, not pinned yet")
    assert await pins(db) == {}  # listing only looks

    async with running(setup.catalog(), db, wait=30):  # a server pins what it sees
        pass
    setup.description.write_text(CHANGED)
    code, stdout, stderr = await setup.cli("tools", "list")
    assert code == 0, stderr
    rows = {line.split()[0]: line for line in stdout.splitlines()[4:]}
    assert rows["t__echo"].endswith("  ok")
    assert rows["t__changing"].endswith(f"  blocked: {BLOCKED}")


async def test_parley_tools_approve_refuses_what_it_cannot_approve(db: Database, setup: Setup) -> None:
    code, stdout, stderr = await setup.cli("tools", "approve", "t__nope", "--wait", "30")
    assert (code, stdout) == (1, "")
    assert stderr == "parley: no tool named t__nope (not running: gone); `parley tools list` shows the tools\n"
    code, _, stderr = await setup.cli("tools", "approve")
    assert (code, stderr) == (2, "parley: give the names of tools to approve, or --all (see `parley tools list`)\n")
    code, _, _ = await setup.cli("tools", "approve", "t__echo", "--all")
    assert code == 2
    code, stdout, stderr = await setup.cli("tools", "approve", "--all")
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 11
    assert all(pin.approved_at is not None for pin in (await pins(db)).values())


async def test_pins_are_read_again_when_the_database_comes_back(db: Database, setup: Setup) -> None:
    async with running(setup.catalog(), db, wait=30):
        pass  # pinned
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = Database(f"postgresql+asyncpg://parley@127.0.0.1:{port}/parley", pool_timeout=1)
    catalog = setup.catalog()
    try:
        async with running(catalog, down, wait=30):
            echo = catalog.get("t__echo")
            assert echo is not None
            assert echo.blocked == (
                "its definition could not be checked against the pinned one yet (database unavailable)"
            )
            assert catalog.specs() == []
            await catalog.refresh_pins(down)  # still down: no change, no error
            assert catalog.specs() == []
            await catalog.refresh_pins(db)
            assert all(tool.blocked is None for tool in catalog.tools())
            assert len(catalog.specs()) == 11
    finally:
        await down.dispose()
