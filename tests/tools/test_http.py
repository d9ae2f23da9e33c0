"""Tool servers over streamable HTTP: a real MCP server on uvicorn (loopback, ephemeral port),
what it receives, and a server that goes away."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from parley.store.db import Database
from parley.tools import ToolCatalog
from tests.support.live_server import LiveServer
from tests.tools.conftest import eventually, make_catalog, running
from tests.tools.tool_server import build_server, http_app

# What any HTTP client sends, and MCP's own headers: nothing else may reach a tool server.
ALLOWED_HEADERS = {
    "host",
    "accept",
    "accept-encoding",
    "connection",
    "content-length",
    "content-type",
    "user-agent",
    "cache-control",
    "mcp-protocol-version",
    "mcp-session-id",
    "last-event-id",
    "x-api-key",
}


@dataclass
class HttpToolServer:
    live: LiveServer
    requests: list[dict[str, str]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.live.url}/mcp"


@pytest.fixture
def http_server() -> Iterator[HttpToolServer]:
    requests: list[dict[str, str]] = []
    events: list[str] = []
    live = LiveServer(http_app(build_server(record=events.append), requests)).start()
    served = HttpToolServer(live, requests, events)
    yield served
    if live.server.started and not live.server.should_exit:
        live.stop()


def call_named(catalog: ToolCatalog, name: str) -> object:
    found = catalog.get(name)
    assert found is not None
    return found


async def test_tools_over_http_receive_only_their_configured_headers(db: Database, http_server: HttpToolServer) -> None:
    catalog = make_catalog({"web": {"url": http_server.url, "headers": {"X-Api-Key": "tool-key"}, "trusted": True}})
    async with running(catalog, db, wait=30):
        echo = catalog.get("web__echo")
        assert echo is not None
        assert (echo.read_only, echo.approval) == (True, "always")
        output = await catalog.call(echo, {"text": "over http"})
        assert (output.text, output.is_error) == ("over http", False)
    assert len(http_server.requests) >= 4  # initialize, initialized, tools/list, tools/call (and the session's end)
    for headers in http_server.requests:
        assert headers["x-api-key"] == "tool-key"
        assert "authorization" not in headers
        assert "cookie" not in headers
        assert set(headers) <= ALLOWED_HEADERS, set(headers) - ALLOWED_HEADERS


async def test_a_call_timeout_over_http_cancels_it_on_the_server(db: Database, http_server: HttpToolServer) -> None:
    catalog = make_catalog({"web": {"url": http_server.url, "timeoutSeconds": 0.5}})
    async with running(catalog, db, wait=30):
        sleep = catalog.get("web__sleep")
        assert sleep is not None
        output = await catalog.call(sleep, {"seconds": 30})
        assert (output.is_error, output.text) == (True, "the tool 'sleep' timed out after 0.5 s")
        await eventually(lambda: "sleep cancelled" in http_server.events)


async def test_a_server_that_goes_away_fails_calls_and_is_tried_again(
    db: Database, http_server: HttpToolServer
) -> None:
    catalog = make_catalog({"web": {"url": http_server.url}})
    async with running(catalog, db, wait=30):
        echo = catalog.get("web__echo")
        assert echo is not None
        assert (await catalog.call(echo, {"text": "one"})).text == "one"
        http_server.live.stop()
        output = await catalog.call(echo, {"text": "two"})
        assert output.is_error
        assert output.text in (
            "the tool server 'web' stopped during the call; it is being restarted",
            "the tool server 'web' refused the call: Connection closed",
        )
        row = await eventually(
            lambda: (found := catalog.describe().servers[0]).state == "restarting" and found.error and found
        )
        assert "ConnectError" in str(row.error)
