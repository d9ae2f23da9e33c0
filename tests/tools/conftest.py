"""Helpers for the tool tests: catalogs of real servers (stdio children, streamable HTTP on
loopback, or the SDK's in-process server on memory streams), a migrated database, polling."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from mcp.server.lowlevel import Server
from mcp.shared.memory import create_client_server_memory_streams

from parley.store.admin import open_database
from parley.store.db import Database
from parley.tools import ToolCatalog, parse_config
from parley.tools.config import ServerConfig
from parley.tools.servers import Backoff, Connector, Streams, open_transport
from tests.conftest import DatabaseUrls

TOOL_SERVER = Path(__file__).with_name("tool_server.py")
FAST = Backoff(first=0.05, most=0.2, settled=30.0)
T = TypeVar("T")


def stdio_entry(*args: str, **keys: Any) -> dict[str, Any]:
    """A configuration entry that runs tests/tools/tool_server.py on stdio."""
    return {"command": sys.executable, "args": [str(TOOL_SERVER), *args], **keys}


def make_catalog(
    servers: Mapping[str, Mapping[str, Any]],
    *,
    in_process: Mapping[str, Callable[[], Server[Any, Any]]] | None = None,
    backoff: Backoff = FAST,
) -> ToolCatalog:
    """A catalog of `servers` (configuration entries); those named in `in_process` run in this
    process on memory streams instead of what their entry says."""
    config = parse_config({"mcpServers": dict(servers)}, production=False, allowed_hosts=())
    return ToolCatalog(config, connect=memory_connector(in_process or {}), backoff=backoff)


def memory_connector(servers: Mapping[str, Callable[[], Server[Any, Any]]]) -> Connector:
    @asynccontextmanager
    async def connect(key: str, config: ServerConfig) -> AsyncIterator[Streams]:
        if key not in servers:
            async with open_transport(key, config) as streams:
                yield streams
            return
        server = servers[key]()
        async with (
            create_client_server_memory_streams() as (client, (server_read, server_write)),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(lambda: server.run(server_read, server_write, server.create_initialization_options()))
            try:
                yield client
            finally:
                tasks.cancel_scope.cancel()

    return connect


@asynccontextmanager
async def running(catalog: ToolCatalog, db: Database, **start: Any) -> AsyncIterator[ToolCatalog]:
    await catalog.start(db, **start)
    try:
        yield catalog
    finally:
        await catalog.aclose()


async def eventually(check: Callable[[], Awaitable[T] | T], *, within: float = 15.0) -> T:
    """The first truthy value of `check`, polled until `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s: {check}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def db(database: DatabaseUrls) -> AsyncIterator[Database]:
    """The test's database, migrated (on PostgreSQL: the template is; parley connects as the app role)."""
    found = await open_database(database.app) if database.kind == "sqlite" else Database(database.app)
    yield found
    await found.dispose()
