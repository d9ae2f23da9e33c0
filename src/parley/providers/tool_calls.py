"""Tool calls on the wire: what both wire formats share.

Requests: the checks on the `tool_choice` and on where tool parts sit, and the plain-text form of
calls and results for a request that offers no tools (the Anthropic API refuses tool blocks
without `tools`, and a server without tool support may refuse or mangle them; both providers
write them the same way). Streams: the id of a call the server sent none for, and the
arguments of a finished call.

Imports: standard library, orjson, parley.errors, parley.providers.base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import (
    ChatMessage,
    ForcedTool,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
)

__all__ = [
    "arguments_json",
    "call_as_text",
    "check_tool_choice",
    "finished_arguments",
    "generated_call_id",
    "result_as_text",
    "result_output",
    "tool_parts",
]


def check_tool_choice(tools: Sequence[ToolSpec], tool_choice: ToolChoice) -> None:
    """Refuse a forced tool that is not offered: servers answer it with a vague 400 or a 500."""
    if isinstance(tool_choice, ForcedTool) and all(tool.name != tool_choice.name for tool in tools):
        raise ProviderError(
            ProviderErrorKind.BAD_REQUEST, f"The tool {tool_choice.name!r} is not offered to the model."
        )


def tool_parts(message: ChatMessage) -> tuple[list[ToolCallPart], list[ToolResultPart]]:
    """The calls of an assistant message and the results of a tool message.

    Raises ProviderError(BAD_REQUEST) for a tool part anywhere else, or a tool message holding
    anything but results: no wire format has a place for them. Runs once per message of the
    history: one pass over its parts.
    """
    role = message.role
    calls: list[ToolCallPart] = []
    results: list[ToolResultPart] = []
    for part in message.parts:
        if isinstance(part, TextPart | ReasoningPart) and role != "tool":
            continue
        if isinstance(part, ToolCallPart) and role == "assistant":
            calls.append(part)
        elif isinstance(part, ToolResultPart) and role == "tool":
            results.append(part)
        else:
            raise ProviderError(
                ProviderErrorKind.BAD_REQUEST,
                "Tool calls belong in assistant messages and tool results, alone, in tool messages.",
            )
    return calls, results


def arguments_json(arguments: Mapping[str, Any]) -> str:
    """A call's arguments as compact JSON text."""
    return orjson.dumps(arguments).decode()


def call_as_text(call: ToolCallPart) -> str:
    return f"[called tool {call.name} with {arguments_json(call.arguments)}]"


def result_output(result: ToolResultPart) -> str:
    """What a result tells the model; never empty (the Anthropic API refuses an empty result)."""
    return result.output if result.output.strip() else "(no output)"


def result_as_text(result: ToolResultPart, names: Mapping[str, str]) -> str:
    """A result as text; `names` maps the call ids seen so far to their tool names."""
    name = names.get(result.call_id, result.call_id)
    return f"[{'error from' if result.is_error else 'result of'} {name}: {result_output(result)}]"


def generated_call_id(ordinal: int) -> str:
    """The id of a call whose server sent none: stable, from the call's place in the reply."""
    return f"call_{ordinal}"


def finished_arguments(pieces: Sequence[str]) -> str:
    """The arguments of a finished call as the model wrote them; none at all are an empty object."""
    arguments = "".join(pieces)
    return arguments if arguments.strip() else "{}"


# Size bounds that llama.cpp's JSON-schema-to-grammar writes out as one nested rule per repetition:
# a `maxLength` of a few hundred already exceeds what its grammar parser accepts, and the server
# process dies on the request. The arguments are checked against the whole schema anyway, by the
# caller, once the call is complete.
_REPETITION_BOUNDS = frozenset({"minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"})


# Keywords whose value maps names to schemas: the names are kept whatever they are.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def grammar_safe_schema(schema: Any) -> Any:
    """`schema` without repetition bounds, at any depth (see `_REPETITION_BOUNDS`); for the
    OpenAI-compatible wire, whose local servers may turn a tool's schema into a grammar."""
    if isinstance(schema, list):
        return [grammar_safe_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    safe: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _REPETITION_BOUNDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            safe[key] = {name: grammar_safe_schema(sub) for name, sub in value.items()}
        else:
            safe[key] = grammar_safe_schema(value)
    return safe
