"""Which tool a person means by `/tool <name>`: the name as typed, against the session's tools.

A tool answers to its exposed name (`demo__calculate`), the part after the server's `__`
(`calculate`) and its title (`Calculator`), compared case-insensitively with `-` and `_` alike.
A name that one tool answers to exactly wins; otherwise a name that begins one tool's names does
(`calc`). Several tools, or none, are an error that names the candidates.

May import: the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Tool = Mapping[str, Any]  # an entry of `GET /sessions/{id}/tools`: name, title, ...


class ToolNameError(ValueError):
    """The typed name picks no tool, or more than one; the message says which ones there are."""


class UnknownTool(ToolNameError):
    def __init__(self, query: str, tools: Sequence[Tool]) -> None:
        names = ", ".join(str(tool["name"]) for tool in tools)
        known = f"this chat's tools are: {names}" if names else "this chat has no tools"
        super().__init__(f"no tool is called {query!r}; {known}")


class AmbiguousTool(ToolNameError):
    def __init__(self, query: str, candidates: Sequence[Tool]) -> None:
        names = ", ".join(str(tool["name"]) for tool in candidates)
        super().__init__(f"{query!r} could be {names}: type more of the name")


def _fold(text: str) -> str:
    return text.strip().casefold().replace("-", "_")


def names_of(tool: Tool) -> set[str]:
    """What `tool` answers to, folded: its exposed name, the part after `__`, its title."""
    name = str(tool["name"])
    names = {_fold(name), _fold(str(tool.get("title") or ""))}
    if "__" in name:
        names.add(_fold(name.split("__", 1)[1]))
    return names - {""}


def find_tool(query: str, tools: Sequence[Tool]) -> Tool:
    """The one tool `query` names; raises `UnknownTool` or `AmbiguousTool`."""
    wanted = _fold(query)
    if not wanted:
        raise UnknownTool(query, tools)
    exact = [tool for tool in tools if wanted in names_of(tool)]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise AmbiguousTool(query, exact)
    begun = [tool for tool in tools if any(name.startswith(wanted) for name in names_of(tool))]
    if len(begun) == 1:
        return begun[0]
    if begun:
        raise AmbiguousTool(query, begun)
    raise UnknownTool(query, tools)
