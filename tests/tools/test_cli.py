"""`parley tools` and `parley check-config` when the tool configuration is missing or wrong
(typer's runner in this process; the commands with servers run as processes in test_pins.py)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from parley.cli import app
from tests.conftest import base_env

runner = CliRunner()


def test_tools_commands_need_a_configuration(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tools", "list"], env={"PARLEY_DATA_DIR": str(tmp_path)})
    assert (result.exit_code, result.output) == (
        1,
        "parley: no tool servers are configured: set PARLEY_MCP_CONFIG (see docs/tools.md)\n",
    )
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"off": {"command": "x", "disabled": True}}}))
    result = runner.invoke(app, ["tools", "approve", "--all"], env={"PARLEY_MCP_CONFIG": str(config)})
    assert result.exit_code == 1


def test_a_bad_configuration_is_listed_in_full(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"a": {"command": "x", "timeoutSeconds": 900, "sudo": True}}}))
    result = runner.invoke(app, ["tools", "list"], env={"PARLEY_MCP_CONFIG": str(config)})
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "parley: the configuration is invalid; fix these environment variables:",
        "  - PARLEY_MCP_CONFIG: mcpServers.a.timeoutSeconds: Input should be less than or equal to 180 (got 900)",
        "  - PARLEY_MCP_CONFIG: mcpServers.a.sudo: unknown key (parley's keys and the other clients' accepted ones "
        "are in docs/tools.md)",
    ]
    result = runner.invoke(app, ["check-config"], env=base_env(tmp_path, PARLEY_MCP_CONFIG=str(config)))
    assert result.exit_code == 2
    assert "PARLEY_MCP_CONFIG: mcpServers.a.timeoutSeconds" in result.output


def test_check_config_shows_the_file(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"a": {"command": "x"}}}))
    result = runner.invoke(app, ["check-config"], env=base_env(tmp_path, PARLEY_MCP_CONFIG=str(config)))
    assert result.exit_code == 0, result.output
    assert ["PARLEY_MCP_CONFIG", str(config)] in [line.split() for line in result.output.splitlines()]
