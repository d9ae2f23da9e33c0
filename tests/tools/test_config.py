"""The tool servers' configuration file: what it accepts, and every refusal, all listed at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parley.config import load_settings, load_tool_settings
from parley.errors import ConfigError
from parley.tools import ToolCatalog, demo_config, load_config, parse_config
from parley.tools.config import HttpServer, StdioServer
from tests.conftest import base_env


def parse(servers: dict[str, Any], *, production: bool = False, allowed: tuple[str, ...] = ()) -> Any:
    return parse_config({"mcpServers": servers}, production=production, allowed_hosts=allowed)


def problems(servers: dict[str, Any], **options: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(servers, **options)
    return caught.value.problems


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_stdio_and_http_servers_with_their_defaults() -> None:
    config = parse(
        {
            "files": {"command": "files-server", "args": ["--root", "/srv"], "env": {"TOKEN": "t"}, "cwd": "/srv"},
            "web": {"url": "https://tools.example.com/mcp", "headers": {"X-Api-Key": "k"}},
        }
    )
    files, web = config.servers["files"], config.servers["web"]
    assert isinstance(files, StdioServer)
    assert isinstance(web, HttpServer)
    assert (files.command, files.args, files.env, files.cwd) == (
        "files-server",
        ["--root", "/srv"],
        {"TOKEN": "t"},
        "/srv",
    )
    assert (web.url, web.headers) == ("https://tools.example.com/mcp", {"X-Api-Key": "k"})
    for server in (files, web):
        assert (server.require_approval, server.timeout_seconds, server.max_output_bytes, server.trusted) == (
            "always",
            60.0,
            262144,
            False,
        )
    assert config.configured
    assert list(config.servers) == ["files", "web"]


def test_parleys_own_keys_and_tool_rules() -> None:
    config = parse(
        {
            "files": {
                "command": "files-server",
                "requireApproval": "destructive",
                "timeoutSeconds": 180,
                "maxOutputBytes": 4096,
                "trusted": True,
                "tools": {"delete": {"requireApproval": "always"}, "debug": {"enabled": False}},
            }
        }
    )
    files = config.servers["files"]
    assert (files.require_approval, files.timeout_seconds, files.max_output_bytes, files.trusted) == (
        "destructive",
        180.0,
        4096,
        True,
    )
    assert files.rule("delete").require_approval == "always"
    assert files.rule("debug").enabled is False
    assert files.rule("read").enabled is True
    assert files.rule("read").require_approval is None


def test_keys_other_clients_write_are_accepted_and_disabled_skips_the_server() -> None:
    config = parse(
        {
            "a": {"type": "stdio", "command": "a", "description": "A server"},
            "b": {"transport": "streamable-http", "url": "https://b.example.com/mcp"},
            "c": {"type": "http", "url": "https://c.example.com/mcp"},
            "off": {"command": "off", "disabled": True},
        }
    )
    assert list(config.servers) == ["a", "b", "c"]
    assert not parse({"off": {"command": "off", "disabled": True}}).configured


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"command": "x", "comand": "y"}, "mcpServers.s.comand: unknown key"),
        ({"command": "x", "tools": {"t": {"enabeld": False}}}, "mcpServers.s.tools.t.enabeld: unknown key"),
        ({"command": "x", "requireApproval": "sometimes"}, "mcpServers.s.requireApproval: Input should be 'always'"),
        ({"command": "x", "tools": {"t": {"requireApproval": "no"}}}, "mcpServers.s.tools.t.requireApproval: Input"),
        ({"command": "x", "timeoutSeconds": 181}, "mcpServers.s.timeoutSeconds: Input should be less than or equal"),
        ({"command": "x", "timeoutSeconds": 0}, "mcpServers.s.timeoutSeconds: Input should be greater than 0"),
        ({"command": "x", "maxOutputBytes": 100}, "mcpServers.s.maxOutputBytes: Input should be greater than or"),
        ({"command": "x", "trusted": "true"}, "mcpServers.s.trusted: Input should be a valid boolean"),
        ({"command": "x", "args": "--flag"}, "mcpServers.s.args: Input should be a valid list"),
        ({"command": "x", "env": {"N": 1}}, "mcpServers.s.env.N: Input should be a valid string"),
        ({"command": "x", "env": {"A=B": "1"}}, "mcpServers.s.env: 'A=B': a variable's name"),
        ({"command": ""}, "mcpServers.s.command: String should have at least 1 character"),
        ({"command": "x", "type": "http"}, "mcpServers.s.type: Input should be 'stdio'"),
        ({"url": "https://x.example.com/", "type": "sse"}, "mcpServers.s.type: Input should be 'http'"),
        ({"url": "https://x.example.com/", "headers": {"Bad Name": "v"}}, "'Bad Name' is not a valid header name"),
        ({"url": "https://x.example.com/", "headers": {"X-A": "v\r\nX-B: w"}}, "contains a line break"),
        ({"url": "ftp://x.example.com/"}, "mcpServers.s.url: must use http or https"),
        ({"url": "https://169.254.169.254/"}, "link-local or cloud-metadata"),
        ({"command": "x", "url": "https://x.example.com/"}, "give either `command`"),
        ({"args": ["x"]}, "give either `command`"),
        ("npx server", "mcpServers.s: must be an object"),
    ],
)
def test_each_refusal_names_the_key_and_the_reason(entry: Any, expected: str) -> None:
    found = problems({"s": entry})
    assert len(found) == 1, found
    assert found[0].startswith("PARLEY_MCP_CONFIG: ")
    assert expected in found[0]


@pytest.mark.parametrize("key", ["has space", "dots.in.it", "", "é", "k" * 65])
def test_server_keys_are_safe_characters(key: str) -> None:
    assert problems({key: {"command": "x"}}) == [
        f"PARLEY_MCP_CONFIG: mcpServers.{key}: a server key is 1 to 64 of A-Z a-z 0-9 _ -"
    ]


def test_a_private_plain_http_url_is_refused_in_production_unless_allowed() -> None:
    entry = {"internal": {"url": "http://10.1.2.3:8080/mcp"}}
    assert parse(entry).servers["internal"]
    [problem] = problems(entry, production=True)
    assert "plain http to '10.1.2.3' is refused in production" in problem
    assert parse(entry, production=True, allowed=("10.1.2.3:8080",)).servers["internal"]


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        {
            "a": {"command": "x", "timeoutSeconds": 999, "trusted": 1},
            "b b": {"url": "http://[::1"},
            "c": {"command": "x", "whatever": True},
        }
    )
    assert len(found) == 5, found


def test_the_file_must_hold_mcp_servers_and_nothing_else() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"servers": {}}, production=False, allowed_hosts=())
    assert caught.value.problems == [
        "PARLEY_MCP_CONFIG: servers: unknown key (the file holds only mcpServers)",
        "PARLEY_MCP_CONFIG: mcpServers: required, an object of servers by key",
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config([1], production=False, allowed_hosts=())
    assert "must hold a JSON object" in caught.value.problems[0]


def test_a_file_that_is_not_json_says_where(tmp_path: Path) -> None:
    path = write(tmp_path / "mcp.json", '{"mcpServers": {\n  "a": {"command": "x",}\n}}')
    with pytest.raises(ConfigError) as caught:
        load_config(path, production=False, allowed_hosts=())
    assert caught.value.problems == [
        f"PARLEY_MCP_CONFIG: {path} is not valid JSON: Expecting property name enclosed in double quotes "
        "at line 2, column 24"
    ]


def test_a_key_written_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "mcp.json", '{"mcpServers": {"a": {"command": "x", "trusted": false, "trusted": true}}}')
    with pytest.raises(ConfigError) as caught:
        load_config(path, production=False, allowed_hosts=())
    assert caught.value.problems == [f"PARLEY_MCP_CONFIG: {path}: the key 'trusted' appears twice in one object"]


def test_a_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.json", production=False, allowed_hosts=())
    assert caught.value.problems == [
        f"PARLEY_MCP_CONFIG: cannot read {tmp_path / 'absent.json'}: No such file or directory"
    ]
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError) as caught:
        load_config(binary, production=False, allowed_hosts=())
    assert caught.value.problems == [f"PARLEY_MCP_CONFIG: {binary} is not UTF-8 text"]


def test_settings_refuse_a_bad_file_with_the_other_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "mcp.json", json.dumps({"mcpServers": {"a": {"command": "x", "requireApproval": "no"}}}))
    env = base_env(tmp_path, PARLEY_MCP_CONFIG=str(path), DATABASE_URL="mysql://x")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.problems == [
        "DATABASE_URL: must start with sqlite+aiosqlite:// or postgresql+asyncpg://",
        "PARLEY_MCP_CONFIG: mcpServers.a.requireApproval: Input should be 'always', 'never' or 'destructive' "
        "(got 'no')",
    ]


def test_settings_check_http_urls_with_the_models_host_rules(tmp_path: Path) -> None:
    path = write(tmp_path / "mcp.json", json.dumps({"mcpServers": {"a": {"url": "http://tools.internal/mcp"}}}))
    env = base_env(tmp_path, PARLEY_MCP_CONFIG=str(path), PARLEY_ENV="production")
    env["MCP_LLM_BASE_URL"] = "https://models.example.com/v1"
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert [p for p in caught.value.problems if p.startswith("PARLEY_MCP_CONFIG")] == [
        "PARLEY_MCP_CONFIG: mcpServers.a.url: plain http to 'tools.internal' is refused in production; use https "
        "or add the host to MCP_LLM_ALLOWED_HOSTS"
    ]
    settings = load_settings({**env, "MCP_LLM_ALLOWED_HOSTS": "tools.internal"})
    assert settings.mcp_config == path


def test_tool_settings_need_no_model_but_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path / "mcp.json", json.dumps({"mcpServers": {"a": {"command": "x"}}}))
    assert load_tool_settings({"PARLEY_MCP_CONFIG": str(path)}).mcp_config == path
    assert load_tool_settings({"PARLEY_MCP_CONFIG": ""}).mcp_config is None
    with pytest.raises(ConfigError) as caught:
        load_tool_settings({"PARLEY_MCP_CONFIG": str(tmp_path / "absent.json")})
    assert "cannot read" in caught.value.problems[0]


def test_a_catalog_from_no_file_is_empty_and_from_a_bad_file_refuses(tmp_path: Path) -> None:
    assert not ToolCatalog.from_config_file(None, production=True, allowed_hosts=()).configured
    path = write(tmp_path / "mcp.json", json.dumps({"mcpServers": {"a": {"command": "x"}}}))
    assert ToolCatalog.from_config_file(path, production=True, allowed_hosts=()).configured
    with pytest.raises(ConfigError):
        ToolCatalog.from_config_file(write(tmp_path / "bad.json", "{"), production=True, allowed_hosts=())


def test_the_demo_configuration_is_valid_json_config(tmp_path: Path) -> None:
    document = demo_config(tmp_path / "notes")
    path = write(tmp_path / "demo.json", json.dumps(document))
    demo = load_config(path, production=True, allowed_hosts=()).servers["demo"]
    assert isinstance(demo, StdioServer)
    assert demo.args[-2:] == ["--data-dir", str(tmp_path / "notes")]
    assert (demo.trusted, demo.require_approval) == (True, "destructive")
