"""`parley demo`'s set-up: the demo tools configured for the server it runs, and its banner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from parley.config import load_settings
from parley.local.demo import banner, demo_environment
from parley.local.model_server import LocalModelServer


@pytest.fixture
def model(tmp_path: Path) -> LocalModelServer:
    return LocalModelServer(log_path=tmp_path / "model.log", api_key="model-key")  # never started


def test_the_demo_runs_with_its_tools_notes_under_its_data_directory(tmp_path: Path, model: LocalModelServer) -> None:
    env = demo_environment(model, tmp_path, {"PARLEY_APPROVAL_TIMEOUT_SECONDS": "300", "HOME": "/root"})
    config = tmp_path / "demo" / "mcp.json"
    assert env["PARLEY_MCP_CONFIG"] == str(config)
    server = json.loads(config.read_text())["mcpServers"]["demo"]
    assert server["command"] == sys.executable
    assert server["args"] == ["-m", "parley.local.demo_tools", "--data-dir", str(tmp_path / "demo-tools")]
    assert (server["trusted"], server["requireApproval"]) == (True, "destructive")
    assert env["PARLEY_APPROVAL_TIMEOUT_SECONDS"] == "300"  # PARLEY_* pass through; nothing else does
    assert "HOME" not in env
    assert env["MCP_LLM_BASE_URL"] == model.base_url
    settings = load_settings(env)  # the configuration is checked as `parley serve` checks it
    assert settings.mcp_config == config
    assert settings.data_dir == tmp_path


@pytest.mark.parametrize("value", ["/etc/parley/mcp.json", "/srv/tools.json"])
def test_tool_servers_the_operator_names_are_kept(tmp_path: Path, model: LocalModelServer, value: str) -> None:
    env = demo_environment(model, tmp_path, {"PARLEY_MCP_CONFIG": value})
    assert env["PARLEY_MCP_CONFIG"] == value
    assert not (tmp_path / "demo" / "mcp.json").exists()


def test_an_empty_setting_is_no_setting(tmp_path: Path, model: LocalModelServer) -> None:
    env = demo_environment(model, tmp_path, {"PARLEY_MCP_CONFIG": " "})
    assert env["PARLEY_MCP_CONFIG"] == str(tmp_path / "demo" / "mcp.json")


def test_the_banner_says_how_to_try_the_demo_tools(tmp_path: Path) -> None:
    text = banner("http://127.0.0.1:8000", "tok", True, tmp_path, tmp_path / "demo" / "mcp.json")
    assert "chat --url http://127.0.0.1:8000 --token tok" in text
    assert "in the browser: the tools menu, or type  /tool calculator 2+3*4" in text
    for command in ("/tools ", "/tool calculator 2+3*4 ", "/tool add_note buy milk "):
        assert f"\n    {command}" in text
    assert "asks for your approval first" in text
    assert f"notes are saved in {tmp_path / 'demo-tools' / 'notes.jsonl'}" in text


def test_the_banner_names_the_operators_tools_or_none(tmp_path: Path) -> None:
    theirs = banner("http://h:1", "tok", False, tmp_path, Path("/etc/parley/mcp.json"))
    assert "Tools: the servers named in PARLEY_MCP_CONFIG (/etc/parley/mcp.json)" in theirs
    assert "/tool calculator" not in theirs
    assert "Tools" not in banner("http://h:1", "tok", False, tmp_path, None)
