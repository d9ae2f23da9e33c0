"""The demo tools as MCP declares them, and the code that runs a call to one of them.

Each declaration is what an MCP client shows a person before a call, and what parley decides
approvals from, so it is written out by hand rather than derived from signatures: a description
of what the tool does and touches, a JSON Schema with a description and bounds per argument, an
output schema for the structured result, and annotations that are true of the implementation.

A call returns text for people and models, plus the same facts as structured content checked
against the output schema. A `DemoToolError` becomes a tool error with its message; the SDK
has already refused arguments that do not fit the input schema.

May import: the standard library, mcp.types and parley.local.demo_tools.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mcp import types

from parley.local.demo_tools.calculator import calculate
from parley.local.demo_tools.clock import MAX_ZONE_NAME, now_in
from parley.local.demo_tools.errors import DemoToolError
from parley.local.demo_tools.expression import MAX_LENGTH
from parley.local.demo_tools.notes import MAX_LIMIT, MAX_QUERY, MAX_TEXT, MAX_TITLE, NoteBook, NoteSelection

DEFAULT_LIMIT = 10
ToolOutput = tuple[list[types.ContentBlock], dict[str, Any]]

# Nothing here reaches outside this machine, so every tool is closed-world. Only add_note
# changes anything, and only by adding: not destructive, and not idempotent (a second identical
# call saves a second note).
_READ_ONLY = types.ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
_APPENDS = types.ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _string(description: str, max_length: int, **extra: Any) -> dict[str, Any]:
    """A non-empty string argument of at most `max_length` characters (`extra`: a default, say)."""
    return {"type": "string", "minLength": 1, "maxLength": max_length, **extra, "description": description}


def _tool(
    *,
    name: str,
    title: str,
    description: str,
    arguments: dict[str, Any],
    result: dict[str, Any],
    annotations: types.ToolAnnotations,
) -> types.Tool:
    """A tool's declaration; its title goes in its annotations too, where MCP clients that predate
    `Tool.title` look for it."""
    return types.Tool(
        name=name,
        title=title,
        description=description,
        inputSchema=arguments,
        outputSchema=result,
        annotations=annotations.model_copy(update={"title": title}),
    )


_LIMIT = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_LIMIT,
    "default": DEFAULT_LIMIT,
    "description": f"How many notes to return at most, newest first (1 to {MAX_LIMIT}; default {DEFAULT_LIMIT}).",
}
_NOTE = _object(
    {
        "id": {"type": "string", "description": "The note's identifier."},
        "created_at": {"type": "string", "description": "When the note was saved, ISO 8601 in UTC."},
        "title": {"type": ["string", "null"], "description": "The note's title, if it has one."},
        "text": {"type": "string", "description": "The note's text."},
    },
    ["id", "created_at", "title", "text"],
)
_SELECTION = _object(
    {
        "notes": {"type": "array", "items": _NOTE, "description": "The notes returned, newest first."},
        "total": {"type": "integer", "description": "How many notes there are in all (or matched the query)."},
        "skipped_lines": {"type": "integer", "description": "Lines of the notes file that were unreadable."},
    },
    ["notes", "total", "skipped_lines"],
)
_STRING = {"type": "string"}

DEFINITIONS = [
    _tool(
        name="now",
        title="Current date and time",
        description=(
            "Tell the current date and time in a time zone, as ISO 8601 with the zone's name, "
            "abbreviation and UTC offset. Reads the system clock only; changes nothing."
        ),
        arguments=_object(
            {
                "timezone": _string(
                    "An IANA time zone name, such as 'Europe/Paris' or 'America/New_York'.",
                    MAX_ZONE_NAME,
                    default="UTC",
                )
            },
            [],
        ),
        result=_object(
            {
                "datetime": _STRING,
                "timezone": _STRING,
                "abbreviation": _STRING,
                "utc_offset": _STRING,
                "weekday": _STRING,
            },
            ["datetime", "timezone", "abbreviation", "utc_offset", "weekday"],
        ),
        annotations=_READ_ONLY,
    ),
    _tool(
        name="calculate",
        title="Calculator",
        description=(
            "Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses, the "
            "functions sqrt, abs, round, min and max, and the constants pi and e. Results are exact "
            "where possible (1/3 stays 1/3); irrational ones are given to 30 significant digits. "
            "Computes only; changes nothing."
        ),
        arguments=_object(
            {
                "expression": _string(
                    f"The expression, such as '(1 + 2) * 3 ** 2' (at most {MAX_LENGTH} characters).", MAX_LENGTH
                )
            },
            ["expression"],
        ),
        result=_object(
            {
                "expression": _STRING,
                "value": {"type": "string", "description": "Exact (7, 2.5, 1/3) or approximate."},
                "decimal": {"type": "string", "description": "The value as a decimal number."},
                "exact": {"type": "boolean", "description": "Whether the value is exact."},
            },
            ["expression", "value", "decimal", "exact"],
        ),
        annotations=_READ_ONLY,
    ),
    _tool(
        name="add_note",
        title="Save a note",
        description=(
            "Save a short note by appending it to the notes file in the demo tools' data directory. "
            "Only adds: existing notes are never changed or deleted."
        ),
        arguments=_object(
            {
                "text": _string(f"What the note says (at most {MAX_TEXT} characters).", MAX_TEXT),
                "title": {  # optional, and may be empty
                    "type": "string",
                    "maxLength": MAX_TITLE,
                    "description": f"An optional one-line title (at most {MAX_TITLE} characters).",
                },
            },
            ["text"],
        ),
        result=_NOTE,
        annotations=_APPENDS,
    ),
    _tool(
        name="list_notes",
        title="List notes",
        description="Show the most recently saved notes, newest first. Reads the notes file only.",
        arguments=_object({"limit": _LIMIT}, []),
        result=_SELECTION,
        annotations=_READ_ONLY,
    ),
    _tool(
        name="search_notes",
        title="Search notes",
        description=(
            "Find saved notes whose title or text contains the query, ignoring case, newest first. "
            "Reads the notes file only."
        ),
        arguments=_object(
            {
                "query": _string(f"The words to look for (at most {MAX_QUERY} characters).", MAX_QUERY),
                "limit": _LIMIT,
            },
            ["query"],
        ),
        result=_SELECTION,
        annotations=_READ_ONLY,
    ),
]


class DemoTools:
    """Runs calls to the tools in `DEFINITIONS`, keeping notes in `notebook`."""

    def __init__(self, notebook: NoteBook) -> None:
        self.notebook = notebook

    def call(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        """The text and structured result of one call; a `DemoToolError` says what went wrong."""
        match name:
            case "now":
                time = now_in(_text(arguments, "timezone", default="UTC"))
                return _output(time.as_text(), asdict(time))
            case "calculate":
                calculation = calculate(_text(arguments, "expression"))
                return _output(calculation.as_text(), asdict(calculation))
            case "add_note":
                note = self.notebook.add(_text(arguments, "text"), _optional_text(arguments, "title"))
                titled = f" titled {note.title!r}" if note.title else ""
                return _output(f"Saved note {note.id}{titled} at {note.created_at}.", note.as_dict())
            case "list_notes":
                selection = self.notebook.latest(_integer(arguments, "limit", DEFAULT_LIMIT))
                heading = f"{_notes(selection.total)} in all" if selection.total else "No notes yet."
                return _selection_output(heading, selection)
            case "search_notes":
                query = _text(arguments, "query")
                selection = self.notebook.search(query, _integer(arguments, "limit", DEFAULT_LIMIT))
                matching = f"{_notes(selection.total)} matching {query.strip()!r}"
                return _selection_output(
                    matching if selection.total else f"No note matches {query.strip()!r}.", selection
                )
        known = ", ".join(tool.name for tool in DEFINITIONS)
        raise DemoToolError(f"unknown tool {name!r}; this server has: {known}")


def _output(text: str, structured: dict[str, Any]) -> ToolOutput:
    return [types.TextContent(type="text", text=text)], structured


def _notes(count: int) -> str:
    return "1 note" if count == 1 else f"{count} notes"


def _selection_output(heading: str, selection: NoteSelection) -> ToolOutput:
    parts = [heading]
    if len(selection.notes) < selection.total:
        parts[0] += f"; the newest {len(selection.notes)}:"
    elif selection.notes:
        parts[0] += ":"
    for note in selection.notes:
        title = f" {note.title}" if note.title else ""
        parts.append(f"[{note.id}] {note.created_at}{title}\n{note.text}")
    if selection.skipped_lines:
        lines = "1 unreadable line" if selection.skipped_lines == 1 else f"{selection.skipped_lines} unreadable lines"
        parts.append(f"({lines} of the notes file skipped.)")
    structured = {
        "notes": [note.as_dict() for note in selection.notes],
        "total": selection.total,
        "skipped_lines": selection.skipped_lines,
    }
    return _output("\n\n".join(parts), structured)


# The SDK checks arguments against the input schema before a call; these checks keep a tool
# correct when it is called without that check, and type the values for the code below.


def _text(arguments: dict[str, Any], name: str, default: str | None = None) -> str:
    value = arguments.get(name, default)
    if not isinstance(value, str):
        raise DemoToolError(f"argument {name!r} must be a string")
    return value


def _optional_text(arguments: dict[str, Any], name: str) -> str | None:
    return _text(arguments, name) if arguments.get(name) is not None else None


def _integer(arguments: dict[str, Any], name: str, default: int) -> int:
    value = arguments.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DemoToolError(f"argument {name!r} must be an integer")
    return value
