"""Pinned tool definitions: a tool runs only while its definition is the one parley first saw, or
the one an operator last approved (`parley tools approve`).

A definition is the tool's name, description and input schema as its server lists them; its
digest is the SHA-256 of their canonical JSON (sorted keys, no spaces). The first sight of a tool
pins it (trust on first use). A server that later describes the tool otherwise, so that a model
would be told something new about what it does, gets it blocked until an operator approves the
new definition. Pins live in `ai_tool_definitions`, shared by every parley process on the
database; `PinBook` holds the digests last read.

Imports: standard library, mcp.types, parley.store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from mcp import types

from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.tenancy import Tenant

log = logging.getLogger("parley.tools")

PinStatus = Literal["ok", "new", "changed", "unchecked"]


@dataclass(frozen=True, slots=True)
class Definition:
    """A tool's definition as its server gives it now, under the name parley exposes it by."""

    name: str
    server: str
    body: dict[str, Any]
    digest: str

    @classmethod
    def of(cls, name: str, server: str, tool: types.Tool) -> Definition:
        body = {"name": tool.name, "description": tool.description, "inputSchema": tool.inputSchema}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return cls(name=name, server=server, body=body, digest=hashlib.sha256(canonical.encode()).hexdigest())


def blocked_reason(name: str, status: PinStatus) -> str | None:
    """Why a tool with this pin status may not run, for people (None when it may)."""
    if status == "changed":
        return f"its definition changed since it was approved; an operator must run `parley tools approve {name}`"
    if status == "unchecked":
        return "its definition could not be checked against the pinned one yet (database unavailable)"
    return None


class PinBook:
    """The pinned digests as last read from the database."""

    def __init__(self) -> None:
        self._digests: dict[str, str] | None = None  # None until read once
        self._warned: set[tuple[str, str]] = set()

    def status(self, definition: Definition) -> PinStatus:
        if self._digests is None:
            return "unchecked"
        pinned = self._digests.get(definition.name)
        if pinned is None:
            return "new"
        if pinned == definition.digest:
            return "ok"
        if (definition.name, definition.digest) not in self._warned:
            self._warned.add((definition.name, definition.digest))
            log.warning(
                "tool %s (server %s) is blocked: its definition changed since it was approved; "
                "an operator must run `parley tools approve %s`",
                definition.name,
                definition.server,
                definition.name,
            )
        return "changed"

    async def load(self, db: Database) -> None:
        async with db.unit(Tenant.system(), readonly=True) as tx:
            pins = await repo.tool_pins(tx)
        self._digests = {pin.name: pin.digest for pin in pins}

    async def record(self, db: Database, definitions: Iterable[Definition]) -> None:
        """Pin the definitions not pinned yet, then read every pin again (another process may have
        pinned one of them first, with another digest)."""
        now = datetime.now(UTC)
        async with db.unit(Tenant.system()) as tx:
            for found in definitions:
                if await repo.record_tool_definition(
                    tx, name=found.name, server=found.server, digest=found.digest, definition=found.body, now=now
                ):
                    log.info("tool %s (server %s) seen for the first time: pinned", found.name, found.server)
            pins = await repo.tool_pins(tx)
        self._digests = {pin.name: pin.digest for pin in pins}

    async def approve(self, db: Database, definitions: Iterable[Definition]) -> None:
        now = datetime.now(UTC)
        async with db.unit(Tenant.system()) as tx:
            for found in definitions:
                await repo.approve_tool_definition(
                    tx, name=found.name, server=found.server, digest=found.digest, definition=found.body, now=now
                )
                log.info("tool %s (server %s): definition approved and pinned", found.name, found.server)
            pins = await repo.tool_pins(tx)
        self._digests = {pin.name: pin.digest for pin in pins}
