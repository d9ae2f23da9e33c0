"""The tools parley can offer models: every configured server's tools, named, ruled and pinned.

`ToolCatalog` owns the servers (`servers.py`) and rebuilds its entries whenever a server lists
its tools or the pins are read again: each tool gets its exposed name (`names.py`), its
approval rule, what its annotations are believed to say, its timeout, and whether its pin
blocks it (`pins.py`). Calls never raise for a tool's failure: they answer a `ToolOutput` with
`is_error` (`output.py`).

Approval rules, read by the chat layer: `always` asks a person before every call; `never` asks
for none; `destructive` asks unless the tool is read-only. Annotations (`readOnlyHint`,
`destructiveHint`) are believed only from a `trusted` server: from any other, every tool is
taken as destructive, as MCP's defaults say.

Imports: standard library, mcp.types, jsonschema (through arguments.py), parley.providers.base,
parley.store, parley.tools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from jsonschema.protocols import Validator
from mcp import types

from parley.errors import ServiceUnavailableError
from parley.providers.base import ToolSpec
from parley.store.db import Database
from parley.tools.arguments import ANY_OBJECT, object_schema, parse_arguments, schema_validator
from parley.tools.config import EMPTY, Approval, HttpServer, McpConfig, ServerConfig, load_config
from parley.tools.names import exposed_names
from parley.tools.output import ToolOutput, error_output, result_output
from parley.tools.pins import Definition, PinBook, PinStatus, blocked_reason
from parley.tools.servers import (
    DEFAULT_BACKOFF,
    START_TIMEOUT,
    Backoff,
    CallError,
    Connector,
    ServerState,
    ToolServer,
    open_transport,
)

log = logging.getLogger("parley.tools")

ToolStatus = Literal["ok", "new", "blocked", "down"]


@dataclass(frozen=True, slots=True)
class CatalogTool:
    """A tool as parley offers it."""

    name: str  # exposed to the model: `<server>__<tool>`, safe for every provider (names.py)
    server: str  # the server's key in the configuration
    tool: str  # the server's own name for it
    description: str
    input_schema: dict[str, Any]  # an object schema ({"type": "object"} when the server gave no usable one)
    approval: Approval  # the tool's rule, else its server's
    read_only: bool  # readOnlyHint, believed from a trusted server only
    destructive: bool  # destructiveHint (true by default), believed from a trusted server only
    timeout: float  # seconds
    blocked: str | None  # why it may not run (its definition changed since approved), else None
    title: str = ""  # a name for people (the tool's title, else its annotations' title)


class ToolNotFound(LookupError):
    """No tool by that exposed name (its server may be down)."""


@dataclass(frozen=True, slots=True)
class ServerRow:
    key: str
    transport: Literal["stdio", "http"]
    target: str  # the command line or the URL
    state: ServerState
    error: str | None
    tools: int


@dataclass(frozen=True, slots=True)
class ToolRow:
    tool: CatalogTool
    status: ToolStatus
    reason: str | None


@dataclass(frozen=True, slots=True)
class CatalogDescription:
    """What `parley tools list` shows: the servers, and every enabled tool with its status."""

    servers: list[ServerRow]
    tools: list[ToolRow]


class ToolCatalog:
    """The configured tool servers and the tools they offer (see the module docstring)."""

    def __init__(
        self,
        config: McpConfig,
        *,
        connect: Connector = open_transport,
        backoff: Backoff = DEFAULT_BACKOFF,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        """`connect` opens a server's transport (tests run servers in-process through it);
        `backoff` paces restarts; `start_timeout` bounds a server's answer to `initialize` and to
        a listing of its tools."""
        self._servers = {
            key: ToolServer(
                key, server, connect=connect, on_tools=self._tools_listed, backoff=backoff, start_timeout=start_timeout
            )
            for key, server in config.servers.items()
        }
        self._pins = PinBook()
        self._pin_lock = asyncio.Lock()
        self._db: Database | None = None
        self._record = True
        self._tools: dict[str, CatalogTool] = {}
        self._definitions: dict[str, Definition] = {}
        self._statuses: dict[str, PinStatus] = {}
        self._validators: dict[str, tuple[dict[str, Any], Validator]] = {}
        self._schemas: dict[str, dict[str, Any]] = {}  # offered input schema by definition digest
        self._specs_chars: tuple[dict[str, CatalogTool] | None, int] = (None, 0)  # for which tools

    @classmethod
    def from_config_file(cls, path: Path | None, *, production: bool, allowed_hosts: Collection[str]) -> ToolCatalog:
        """The catalog of the file `PARLEY_MCP_CONFIG` names (empty for None); `ConfigError` lists
        every problem of the file."""
        if path is None:
            return cls(EMPTY)
        return cls(load_config(path, production=production, allowed_hosts=allowed_hosts))

    @property
    def configured(self) -> bool:
        return bool(self._servers)

    # -- lifetime ----------------------------------------------------------------------------------

    async def start(self, db: Database, *, wait: float = 5.0, record: bool = True) -> None:
        """Start every server in the background and wait up to `wait` seconds for their first tool
        listings. `record`: pin tools seen for the first time (`parley tools list` only looks)."""
        self._db, self._record = db, record
        await self._read_pins(db)
        for server in self._servers.values():
            server.start()
        waiters = [asyncio.ensure_future(server.first_attempt.wait()) for server in self._servers.values()]
        if waiters:
            await asyncio.wait(waiters, timeout=wait)
            for waiter in waiters:
                waiter.cancel()

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Stop every server: each closes its session (a stdio child is asked to exit, then
        terminated, then killed) within `grace` seconds, or is cut off."""
        await asyncio.gather(*(server.stop(grace) for server in self._servers.values()))

    async def refresh_pins(self, db: Database) -> None:
        """Read the pins again, so that an operator's `parley tools approve` reaches running servers."""
        await self._read_pins(db)
        if self._record:
            await self._record_new(db)
        self._rebuild()

    # -- the tools ---------------------------------------------------------------------------------

    def tools(self) -> list[CatalogTool]:
        """Every enabled tool known now, blocked ones included, by name."""
        return list(self._tools.values())

    def get(self, name: str) -> CatalogTool | None:
        return self._tools.get(name)

    def specs(self) -> list[ToolSpec]:
        """The tools a model may be offered: enabled and not blocked, by name."""
        return [
            ToolSpec(name=tool.name, description=tool.description, input_schema=tool.input_schema)
            for tool in self._tools.values()
            if tool.blocked is None
        ]

    def specs_chars(self) -> int:
        """The characters the offered tools' definitions add to every model request (what a
        history is fitted around); counted once per listing of the tools, not per turn."""
        if self._specs_chars[0] is not self._tools:
            chars = sum(len(orjson.dumps(spec.input_schema)) + len(spec.description) for spec in self.specs())
            self._specs_chars = (self._tools, chars)
        return self._specs_chars[1]

    def parse_arguments(self, tool: CatalogTool, text: str) -> dict[str, Any]:
        """The model's JSON arguments as an object that fits the tool's schema; `InvalidArguments`
        says to the model what is wrong."""
        cached = self._validators.get(tool.name)
        if cached is None or cached[0] is not tool.input_schema:
            cached = self._validators[tool.name] = (tool.input_schema, schema_validator(tool.input_schema))
        return parse_arguments(text, cached[1])

    async def call(self, tool: CatalogTool, arguments: dict[str, Any]) -> ToolOutput:
        """Run one call. A failure of any kind is an output with `is_error`; only cancellation
        raises (and cancels the call on the server)."""
        started = time.monotonic()
        current = self._tools.get(tool.name)
        if current is None:
            return error_output(f"the tool {tool.name!r} is not offered any more", duration_ms=0)
        if current.blocked is not None:
            return error_output(f"the tool {tool.name!r} is blocked: {current.blocked}", duration_ms=0)
        server = self._servers[current.server]
        try:
            result = await server.call(current.tool, arguments, time_limit=current.timeout)
        except CallError as exc:
            log.warning("tool call %s failed: %s", current.name, exc.message)
            return error_output(exc.message, duration_ms=_since(started))
        return result_output(result, max_bytes=server.config.max_output_bytes, duration_ms=_since(started))

    async def approve(self, db: Database, names: Collection[str] | None = None) -> list[str]:
        """Pin the current definitions of the tools `names` (None: every tool), as their servers
        list them now; the names approved. `ToolNotFound` for a name no running server offers."""
        for server in self._servers.values():
            await server.relist()
        wanted = sorted(self._definitions) if names is None else list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self._definitions]
        if unknown:
            down = [key for key, server in self._servers.items() if not server.running]
            hint = f" (not running: {', '.join(down)})" if down else ""
            raise ToolNotFound(f"no tool named {', '.join(unknown)}{hint}; `parley tools list` shows the tools")
        async with self._pin_lock:
            await self._pins.approve(db, [self._definitions[name] for name in wanted])
        self._rebuild()
        return wanted

    def describe(self) -> CatalogDescription:
        servers = [
            ServerRow(
                key=key,
                transport="http" if isinstance(server.config, HttpServer) else "stdio",
                target=server.config.target,
                state=server.state,
                error=server.error,
                tools=sum(1 for tool in self._tools.values() if tool.server == key),
            )
            for key, server in self._servers.items()
        ]
        rows = []
        for tool in self._tools.values():
            server = self._servers[tool.server]
            if not server.running:
                reason = server.error or server.state
                rows.append(ToolRow(tool=tool, status="down", reason=f"server {tool.server} is down: {reason}"))
            elif tool.blocked is not None:
                rows.append(ToolRow(tool=tool, status="blocked", reason=tool.blocked))
            elif self._statuses.get(tool.name) == "new":
                rows.append(ToolRow(tool=tool, status="new", reason="seen for the first time, not pinned yet"))
            else:
                rows.append(ToolRow(tool=tool, status="ok", reason=None))
        return CatalogDescription(servers=servers, tools=rows)

    # -- keeping the entries -----------------------------------------------------------------------

    async def _tools_listed(self, server: ToolServer) -> None:
        self._rebuild()
        if self._record and self._db is not None:
            await self._record_new(self._db)
            self._rebuild()

    async def _read_pins(self, db: Database) -> None:
        try:
            await self._pins.load(db)
        except ServiceUnavailableError as exc:
            log.warning("could not read the pinned tool definitions: %s", exc)

    async def _record_new(self, db: Database) -> None:
        async with self._pin_lock:
            new = [found for name, found in self._definitions.items() if self._statuses.get(name) == "new"]
            if not new:
                return
            try:
                await self._pins.record(db, new)
            except ServiceUnavailableError as exc:
                log.warning("could not pin the tools seen for the first time: %s", exc)

    def _rebuild(self) -> None:
        listed = [
            (key, tool)
            for key, server in self._servers.items()
            for tool in server.tools
            if server.config.rule(tool.name).enabled
        ]
        names = exposed_names((key, tool.name) for key, tool in listed)
        tools: dict[str, CatalogTool] = {}
        definitions: dict[str, Definition] = {}
        statuses: dict[str, PinStatus] = {}
        for key, tool in listed:
            name = names[(key, tool.name)]
            definition = definitions[name] = Definition.of(name, key, tool)
            status = statuses[name] = self._pins.status(definition)
            schema = self._schemas.get(definition.digest)
            if schema is None:
                schema = self._schemas[definition.digest] = _offered_schema(name, tool)
            tools[name] = _entry(name, key, self._servers[key].config, tool, schema, blocked_reason(name, status))
        self._tools = dict(sorted(tools.items()))
        self._definitions, self._statuses = definitions, statuses


def _offered_schema(name: str, tool: types.Tool) -> dict[str, Any]:
    schema = object_schema(tool.inputSchema)
    if schema is None:
        log.warning("tool %s has no usable input schema; it is offered as taking any object", name)
        return dict(ANY_OBJECT)
    return schema


def _entry(
    name: str, key: str, config: ServerConfig, tool: types.Tool, schema: dict[str, Any], blocked: str | None
) -> CatalogTool:
    hints = tool.annotations if config.trusted else None
    read_only = bool(hints and hints.readOnlyHint)
    return CatalogTool(
        name=name,
        server=key,
        tool=tool.name,
        description=tool.description or "",
        input_schema=schema,
        approval=config.rule(tool.name).require_approval or config.require_approval,
        read_only=read_only,
        # MCP: destructiveHint defaults to true and means something only for a tool that writes.
        destructive=not read_only and not (hints is not None and hints.destructiveHint is False),
        timeout=config.timeout_seconds,
        blocked=blocked,
        title=tool.title or (tool.annotations.title if tool.annotations is not None else None) or "",
    )


def _since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
