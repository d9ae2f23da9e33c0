"""`/tool <name>`: which of a session's tools a typed name picks (`parley.client.tool_names`)."""

from __future__ import annotations

from typing import Any

import pytest

from parley.client.tool_names import AmbiguousTool, UnknownTool, find_tool, names_of

DEMO = [
    {"name": "demo__now", "title": "Current date and time"},
    {"name": "demo__calculate", "title": "Calculator"},
    {"name": "demo__add_note", "title": "Save a note"},
    {"name": "demo__list_notes", "title": "List notes"},
    {"name": "demo__search_notes", "title": "Search notes"},
]


def picked(query: str, tools: list[dict[str, Any]] = DEMO) -> str:
    return str(find_tool(query, tools)["name"])


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("calculator", "demo__calculate"),  # the title
        ("Calculator", "demo__calculate"),
        ("calculate", "demo__calculate"),  # the part after `__`
        ("demo__calculate", "demo__calculate"),  # the exposed name
        ("CALC", "demo__calculate"),  # a prefix of both its names
        ("add_note", "demo__add_note"),
        ("add-note", "demo__add_note"),  # - and _ alike
        ("add", "demo__add_note"),
        ("save", "demo__add_note"),  # a prefix of the title
        ("search", "demo__search_notes"),
        ("current", "demo__now"),
        ("  now ", "demo__now"),
    ],
)
def test_a_name_picks_its_tool(query: str, name: str) -> None:
    assert picked(query) == name


def test_an_exact_name_wins_over_a_longer_one_it_begins() -> None:
    tools = [{"name": "files__list", "title": "list"}, {"name": "files__list_all", "title": "List everything"}]
    assert picked("list", tools) == "files__list"
    assert picked("list_a", tools) == "files__list_all"


def test_a_prefix_of_several_tools_names_them() -> None:
    with pytest.raises(AmbiguousTool, match=r"'s' could be demo__add_note, demo__search_notes: type more"):
        find_tool("s", DEMO)
    with pytest.raises(AmbiguousTool, match="could be demo__add_note, demo__list_notes"):
        find_tool("demo__", DEMO[2:4])


def test_the_same_name_on_two_servers_is_ambiguous_until_the_server_is_named() -> None:
    tools = [{"name": "a__calculate", "title": "Calculator"}, {"name": "b__calculate", "title": "Calculator"}]
    with pytest.raises(AmbiguousTool, match="a__calculate, b__calculate"):
        find_tool("calculator", tools)
    assert picked("b__calc", tools) == "b__calculate"


def test_a_hashed_name_is_found_by_the_start_of_its_tool_name() -> None:
    tools = [{"name": "web__fetch_url_3f2a9c01", "title": None}]
    assert names_of(tools[0]) == {"web__fetch_url_3f2a9c01", "fetch_url_3f2a9c01"}
    assert picked("fetch", tools) == "web__fetch_url_3f2a9c01"


@pytest.mark.parametrize("query", ["weather", "", "   ", "calculator2"])
def test_a_name_that_picks_nothing_lists_the_tools(query: str) -> None:
    with pytest.raises(UnknownTool, match="this chat's tools are: demo__now, demo__calculate, demo__add_note"):
        find_tool(query, DEMO)


def test_without_tools_nothing_is_picked() -> None:
    with pytest.raises(UnknownTool, match="no tool is called 'calculator'; this chat has no tools"):
        find_tool("calculator", [])
