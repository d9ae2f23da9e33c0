"""An MCP server for the tool tests, on the SDK's low-level `Server`: run on stdio
(`python tests/tools/tool_server.py`), served over streamable HTTP (`http_app`), or in-process.

Its tools: echo, pid, environment (the process's variables), sleep (records a cancellation),
big (long text), fail (a tool error), picture (an image), structured (structured content only),
announce (sends `notifications/tools/list_changed`), shout (writes to stderr), and changing (its
description is read from a file at every listing, so a test can change a definition under a
running client).

Imports only the standard library, anyio, mcp and starlette (for HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

READ_ONLY = types.ToolAnnotations(readOnlyHint=True)
DESTRUCTIVE = types.ToolAnnotations(readOnlyHint=False, destructiveHint=True)
ADDS = types.ToolAnnotations(readOnlyHint=False, destructiveHint=False)


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def definitions(description_file: Path | None) -> list[types.Tool]:
    changing = description_file.read_text() if description_file is not None else "Says its description."
    return [
        types.Tool(
            name="echo",
            description="Say the text back.",
            inputSchema=_schema({"text": {"type": "string"}}, ["text"]),
            annotations=READ_ONLY,
        ),
        types.Tool(name="pid", description="The server's process id.", inputSchema=_schema({}, [])),
        types.Tool(name="environment", description="The server's environment.", inputSchema=_schema({}, [])),
        types.Tool(
            name="sleep",
            description="Sleep.",
            inputSchema=_schema({"seconds": {"type": "number"}}, ["seconds"]),
            annotations=DESTRUCTIVE,
        ),
        types.Tool(
            name="big",
            description="Repeat a text.",
            inputSchema=_schema({"count": {"type": "integer"}, "text": {"type": "string"}}, ["count"]),
            annotations=ADDS,
        ),
        types.Tool(name="fail", description="Fail.", inputSchema=_schema({"message": {"type": "string"}}, ["message"])),
        types.Tool(name="picture", description="A picture.", inputSchema=_schema({}, [])),
        types.Tool(name="structured", description="Structured only.", inputSchema=_schema({}, [])),
        types.Tool(name="announce", description="Say that the tools changed.", inputSchema=_schema({}, [])),
        types.Tool(
            name="shout",
            description="Write the text to stderr.",
            inputSchema=_schema({"text": {"type": "string"}}, ["text"]),
        ),
        types.Tool(name="changing", description=changing, inputSchema=_schema({}, [])),
    ]


def build_server(
    *, description_file: Path | None = None, record: Callable[[str], None] = lambda event: None
) -> Server[Any, Any]:
    server: Server[Any, Any] = Server("parley-test-tools")

    async def list_tools() -> list[types.Tool]:
        return definitions(description_file)

    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        text: str
        match name:
            case "echo":
                text = arguments["text"]
            case "pid":
                text = str(os.getpid())
            case "environment":
                text = json.dumps(dict(os.environ))
            case "sleep":
                record("sleep started")
                try:
                    await anyio.sleep(arguments["seconds"])
                except anyio.get_cancelled_exc_class():
                    record("sleep cancelled")
                    raise
                text = "slept"
            case "big":
                text = arguments.get("text", "é") * arguments["count"]
            case "fail":
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=arguments["message"])], isError=True
                )
            case "picture":
                data = base64.b64encode(b"\x89PNG" + b"\0" * 12 * 1024).decode()
                return types.CallToolResult(
                    content=[
                        types.TextContent(type="text", text="a picture:"),
                        types.ImageContent(type="image", data=data, mimeType="image/png"),
                    ]
                )
            case "structured":
                return types.CallToolResult(content=[], structuredContent={"answer": 42, "word": "héllo"})
            case "announce":
                await server.request_context.session.send_tool_list_changed()
                text = "announced"
            case "shout":
                print(arguments["text"], file=sys.stderr, flush=True)
                text = "shouted"
            case _:
                text = "changing"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    server.call_tool()(call_tool)
    return server


def http_app(server: Server[Any, Any], requests: list[dict[str, str]]) -> Any:
    """The server as an ASGI app at `/mcp` (streamable HTTP); the headers of every request it
    receives are appended to `requests`."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.routing import Route

    manager = StreamableHTTPSessionManager(app=server)

    class Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            requests.append({name.decode().lower(): value.decode() for name, value in scope["headers"]})
            await manager.handle_request(scope, receive, send)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route("/mcp", endpoint=Endpoint(), methods=["GET", "POST", "DELETE"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--description-file", type=Path)
    parser.add_argument("--events", type=Path, help="append what happens here, a line each")
    parser.add_argument("--slow-start", type=float, default=0.0)
    parser.add_argument("--garbage", action="store_true", help="write a line that is not JSON-RPC to stdout first")
    arguments = parser.parse_args()
    print(f"tool server {os.getpid()} starting", file=sys.stderr, flush=True)
    if arguments.slow_start:
        time.sleep(arguments.slow_start)
    if arguments.garbage:
        print("this is not JSON-RPC", flush=True)
    events: Path | None = arguments.events

    def record(event: str) -> None:
        if events is not None:
            with events.open("a") as file:
                file.write(event + "\n")

    server = build_server(description_file=arguments.description_file, record=record)

    async def serve() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    asyncio.run(serve())


if __name__ == "__main__":
    main()
