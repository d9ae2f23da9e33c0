"""The demo tools served over stdio with the MCP SDK's low-level `Server`.

The low-level server rather than FastMCP, because the declarations in `tools.py` are written
out by hand (they are what a person approves) and the low-level server publishes them as they
are, checks arguments against their input schemas and results against their output schemas.

A call never takes the server down: a `DemoToolError` is a tool error with its message, and
anything else is logged to stderr (stdout carries the protocol) and reported as an internal
error of that tool, without details.

May import: the standard library, mcp, parley (its version) and parley.local.demo_tools.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

import parley
from parley.local.demo_tools.errors import DemoToolError
from parley.local.demo_tools.notes import NoteBook
from parley.local.demo_tools.tools import DEFINITIONS, DemoTools, ToolOutput

SERVER_NAME = "parley-demo"
INSTRUCTIONS = (
    "Safe demo tools from parley: the current time, a calculator, and notes. None reaches the "
    "network; only add_note writes, and it only appends to the notes file in its data directory."
)

logger = logging.getLogger(__name__)


def build_server(tools: DemoTools) -> Server[Any, Any]:
    server: Server[Any, Any] = Server(SERVER_NAME, version=parley.__version__, instructions=INSTRUCTIONS)

    async def list_tools() -> list[types.Tool]:
        return DEFINITIONS

    async def call_tool(name: str, arguments: dict[str, Any]) -> ToolOutput | types.CallToolResult:
        # The tools are quick (bounded arithmetic, one small file), so they run on the event loop.
        try:
            return tools.call(name, arguments)
        except DemoToolError as exc:
            return _error(exc.message)
        except Exception:
            logger.exception("tool %r failed", name)
            return _error(f"internal error in the tool {name!r}; the server's log has the details")

    # The SDK's registration decorators carry no type annotations; applied as calls, they keep
    # the handlers above fully typed.
    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    server.call_tool()(call_tool)
    return server


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], isError=True)


async def serve_stdio(data_dir: Path) -> None:
    """Serve the demo tools on this process's stdin and stdout until the client closes stdin."""
    server = build_server(DemoTools(NoteBook(data_dir)))
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
