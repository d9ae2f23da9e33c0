"""The tool servers' configuration file (`PARLEY_MCP_CONFIG`), in the common `mcpServers` shape.

    {"mcpServers": {"<key>": {"command": ..., "args": [...], "env": {...}, "cwd": ...},
                    "<key>": {"url": "https://...", "headers": {...}}}}

A server with `command` runs as a child process on stdio; one with `url` is reached over
streamable HTTP. parley's own keys per server: `requireApproval`, `timeoutSeconds`,
`maxOutputBytes`, `trusted`, and `tools` (per tool: `enabled`, `requireApproval`). Values are
checked strictly (`"false"` is not a boolean) and an unknown key is an error, since a typo in a
security setting must not pass silently; the keys other clients commonly write (`type` or
`transport` naming the same transport, `disabled`, `description`) are accepted, and `disabled`
skips the server. HTTP URLs pass the same SSRF policy as the model's base URL.

Reading never stops at the first problem: `ConfigError` lists every one.

Imports: standard library, pydantic, parley.errors, parley.providers.url_policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from parley.errors import ConfigError
from parley.providers.url_policy import check_base_url

Approval = Literal["always", "never", "destructive"]
HttpKind = Literal["http", "streamable-http", "streamableHttp", "streamable_http"]

VARIABLE = "PARLEY_MCP_CONFIG"
DEFAULT_TIMEOUT_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 180.0
DEFAULT_MAX_OUTPUT_BYTES = 256 * 1024
MIN_OUTPUT_BYTES = 1024  # room for the truncation marker
MAX_OUTPUT_BYTES = 8 * 1024 * 1024
SERVER_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


class _Strict(BaseModel):
    # Strict: a string is not a boolean and a number is not a string, whatever pydantic would coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


class ToolRule(_Strict):
    """What the configuration says about one of a server's tools (by the server's own name)."""

    enabled: bool = True
    require_approval: Approval | None = Field(None, alias="requireApproval")


class _Server(_Strict):
    require_approval: Approval = Field("always", alias="requireApproval")
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS, alias="timeoutSeconds")
    max_output_bytes: int = Field(
        DEFAULT_MAX_OUTPUT_BYTES, ge=MIN_OUTPUT_BYTES, le=MAX_OUTPUT_BYTES, alias="maxOutputBytes"
    )
    trusted: bool = False
    tools: dict[str, ToolRule] = Field(default_factory=dict)
    # Written by other clients' configurations: accepted; `disabled` skips the server.
    disabled: bool = False
    description: str | None = None

    def rule(self, tool: str) -> ToolRule:
        return self.tools.get(tool) or _NO_RULE


_NO_RULE = ToolRule()


class StdioServer(_Server):
    """A server run as a child process, speaking MCP on its stdin and stdout."""

    type: Literal["stdio"] | None = None
    transport: Literal["stdio"] | None = None
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(None, min_length=1)

    @field_validator("env")
    @classmethod
    def _environment(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise ValueError(f"{name!r}: a variable's name must be non-empty without '=' or NUL, its value no NUL")
        return env

    @property
    def target(self) -> str:
        return " ".join([self.command, *self.args])


class HttpServer(_Server):
    """A server reached over MCP's streamable HTTP transport."""

    type: HttpKind | None = None
    transport: HttpKind | None = None
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(ch in value for ch in "\r\n\0"):
                raise ValueError(f"the value of {name!r} contains a line break or NUL")
        return headers

    @property
    def target(self) -> str:
        return self.url


ServerConfig = StdioServer | HttpServer


@dataclass(frozen=True, slots=True)
class McpConfig:
    """The servers to run, in the file's order (disabled ones left out)."""

    servers: dict[str, ServerConfig]

    @property
    def configured(self) -> bool:
        return bool(self.servers)


EMPTY = McpConfig(servers={})


def load_config(path: Path, *, production: bool, allowed_hosts: Collection[str]) -> McpConfig:
    """The configuration in the file at `path`; `ConfigError` lists every problem."""
    config, problems = _read_file(path, production=production, allowed_hosts=allowed_hosts)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def parse_config(data: object, *, production: bool, allowed_hosts: Collection[str]) -> McpConfig:
    """The configuration from already-decoded JSON (`demo_config`, tests); `ConfigError` as above."""
    config, problems = _parse(data, production=production, allowed_hosts=allowed_hosts)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def config_problems(path: Path, *, production: bool, allowed_hosts: Collection[str]) -> list[str]:
    """Every problem of the file at `path` (empty when it is valid), for the settings' check."""
    return _read_file(path, production=production, allowed_hosts=allowed_hosts)[1]


def _read_file(path: Path, *, production: bool, allowed_hosts: Collection[str]) -> tuple[McpConfig | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [f"{VARIABLE}: cannot read {path}: {exc.strerror or exc}"]
    except UnicodeDecodeError:
        return None, [f"{VARIABLE}: {path} is not UTF-8 text"]
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        return None, [f"{VARIABLE}: {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"]
    except _DuplicateKey as exc:
        return None, [f"{VARIABLE}: {path}: the key {exc.args[0]!r} appears twice in one object"]
    return _parse(data, production=production, allowed_hosts=allowed_hosts)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON lets a later key silently replace an earlier one; in a security setting, refuse.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse(data: object, *, production: bool, allowed_hosts: Collection[str]) -> tuple[McpConfig | None, list[str]]:
    if not isinstance(data, Mapping):
        return None, [f'{VARIABLE}: the file must hold a JSON object {{"mcpServers": {{...}}}}']
    problems = [
        f"{VARIABLE}: {key}: unknown key (the file holds only mcpServers)" for key in data if key != "mcpServers"
    ]
    entries = data.get("mcpServers")
    if not isinstance(entries, Mapping):
        return None, [*problems, f"{VARIABLE}: mcpServers: required, an object of servers by key"]
    servers: dict[str, ServerConfig] = {}
    for key, entry in entries.items():
        where = f"mcpServers.{key}"
        if not SERVER_KEY.fullmatch(key):
            problems.append(f"{VARIABLE}: {where}: a server key is 1 to 64 of A-Z a-z 0-9 _ -")
        server, found = _server(where, entry, production=production, allowed_hosts=allowed_hosts)
        problems += found
        if server is not None and not server.disabled:
            servers[key] = server
    return (None if problems else McpConfig(servers=servers)), problems


def _server(
    where: str, entry: object, *, production: bool, allowed_hosts: Collection[str]
) -> tuple[ServerConfig | None, list[str]]:
    if not isinstance(entry, Mapping):
        return None, [f"{VARIABLE}: {where}: must be an object"]
    if ("command" in entry) == ("url" in entry):
        return None, [
            f"{VARIABLE}: {where}: give either `command` (a server on stdio) or `url` (a streamable HTTP server)"
        ]
    model: type[ServerConfig] = StdioServer if "command" in entry else HttpServer
    try:
        server = model.model_validate(entry)
    except ValidationError as exc:
        return None, [f"{VARIABLE}: {where}.{_describe(error)}" for error in exc.errors()]
    if isinstance(server, HttpServer):
        refusals = check_base_url(server.url, production=production, allowed_hosts=allowed_hosts)
        return server, [f"{VARIABLE}: {where}.url: {reason}" for reason in refusals]
    return server, []


def _describe(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key (parley's keys and the other clients' accepted ones are in docs/tools.md)"
    message = str(error["msg"]).removeprefix("Value error, ")
    shown = repr(error.get("input"))
    return f"{location}: {message} (got {shown[:80]}{'…' if len(shown) > 80 else ''})"
