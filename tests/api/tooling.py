"""Tool-calling API tests' world: parley with the test MCP server (`tests/support/mcp_tools_server.py`)
configured through PARLEY_MCP_CONFIG, and helpers to decide calls and read what the model was sent."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from parley.providers.base import ChatMessage, ToolResultPart
from tests.api.conftest import API
from tests.conftest import ServerFactory, Tenants
from tests.support.live_server import LiveServer
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.sse_client import Stream, read_stream

REPO = Path(__file__).resolve().parents[2]


def tool_results(messages: list[ChatMessage]) -> list[ToolResultPart]:
    """Every tool result the model was sent, in order."""
    return [p for m in messages if m.role == "tool" for p in m.parts if isinstance(p, ToolResultPart)]


def quoting_the_result(messages: list[ChatMessage]) -> Reply:
    """The model's answer after a tool ran: it quotes the last result it was given."""
    return Reply(tokens=["Result: ", tool_results(messages)[-1].output])


@dataclass
class Tools:
    """parley with the test tool server, and what the tools did."""

    make_server: ServerFactory
    tenants: Tenants
    provider: ScriptedProvider
    log: Path
    config: Path

    def configure(self, **server: Any) -> None:
        entry = {
            "command": sys.executable,
            "args": ["-m", "tests.support.mcp_tools_server", "--log", str(self.log)],
            "cwd": str(REPO),
            "requireApproval": "destructive",
            "trusted": True,
            **server,
        }
        self.config.write_text(json.dumps({"mcpServers": {"t": entry}}))

    def start(self, **env: str) -> LiveServer:
        """parley with these tools, on the scripted provider unless `model_server` names a real one."""
        return self.make_server(self.provider, PARLEY_MCP_CONFIG=str(self.config), **env)

    def start_on(self, **env: str) -> LiveServer:
        """parley with these tools on the model server `env` configures (MCP_LLM_*, ANTHROPIC_*)."""
        return self.make_server(None, PARLEY_MCP_CONFIG=str(self.config), **env)

    def ran(self) -> list[str]:
        """The notes `record` wrote, one per run."""
        return self.log.read_text().splitlines() if self.log.exists() else []


def tool_world(make_server: ServerFactory, tenants: Tenants, directory: Path) -> Tools:
    """The test tool server configured in `directory`, the model scripted; nothing started yet."""
    world = Tools(make_server, tenants, ScriptedProvider(), directory / "ran.log", directory / "mcp.json")
    world.configure()
    return world


def decide(c: httpx2.Client, sid: str, execution_id: str, **body: Any) -> Stream:
    """Approve or deny one call; the continuation's stream, or the JSON answer."""
    with c.stream("POST", f"{API}/sessions/{sid}/approve/{execution_id}", json=body) as r:
        return read_stream(r)


def pending_call(stream: Stream, index: int = 0) -> dict[str, Any]:
    return stream.of("approval_required")[index].data
