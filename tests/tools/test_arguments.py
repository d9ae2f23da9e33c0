"""A model's tool arguments: JSON syntax, object-ness and the tool's schema, told to the model."""

from __future__ import annotations

from typing import Any

import pytest

from parley.tools import InvalidArguments
from parley.tools.arguments import ANY_OBJECT, object_schema, parse_arguments, schema_validator

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "filters": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}}}},
    },
    "required": ["query"],
    "additionalProperties": False,
}


def parse(text: str, schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    return parse_arguments(text, schema_validator(schema))


def refusal(text: str, schema: dict[str, Any] = SCHEMA) -> str:
    with pytest.raises(InvalidArguments) as caught:
        parse(text, schema)
    assert str(caught.value) == caught.value.message
    return caught.value.message


def test_valid_arguments_come_back_as_an_object() -> None:
    assert parse('{"query": "cats", "limit": 5}') == {"query": "cats", "limit": 5}


def test_a_raw_newline_or_tab_inside_a_string_is_read_as_itself() -> None:
    # As the local model writes them: JSON asks for \n, a lenient reader takes the character.
    assert parse('{"query": "two\nlines\tand a tab"}') == {"query": "two\nlines\tand a tab"}


def test_blank_text_means_no_arguments() -> None:
    assert parse("  ", ANY_OBJECT) == {}
    assert refusal("") == "The arguments do not match the tool's input schema: at $: 'query' is a required property."


def test_a_syntax_error_says_where() -> None:
    assert refusal('{"query": "cats",\n "limit": }') == (
        "The arguments are not valid JSON: Expecting value at line 2, column 11 (character 28). "
        "Send one JSON object that matches the tool's input schema."
    )
    assert "NaN is not a JSON value" in refusal('{"query": "x", "limit": NaN}')


@pytest.mark.parametrize(
    ("text", "kind"), [("[1, 2]", "an array"), ('"cats"', "a string"), ("3", "a number"), ("null", "null")]
)
def test_arguments_must_be_an_object(text: str, kind: str) -> None:
    assert refusal(text) == f"The arguments must be a JSON object of named arguments, not {kind}."


def test_a_schema_violation_gives_the_path_and_the_reason() -> None:
    assert refusal('{"query": "cats", "limit": 500}') == (
        "The arguments do not match the tool's input schema: at $.limit: 500 is greater than the maximum of 100."
    )
    assert refusal('{"query": "x", "filters": [{"field": "a"}, {"field": 3}]}') == (
        "The arguments do not match the tool's input schema: at $.filters[1].field: 3 is not of type 'string'."
    )


def test_several_violations_are_told_up_to_five() -> None:
    numbers = {"type": "object", "properties": {f"n{i}": {"type": "integer"} for i in range(7)}}
    message = refusal("{" + ", ".join(f'"n{i}": "x"' for i in range(7)) + "}", numbers)
    assert message.startswith("The arguments do not match the tool's input schema: at $.n0: 'x' is not of type")
    assert message.count("at $") == 5
    assert message.endswith("; and 2 more problems.")
    message = refusal("{" + ", ".join(f'"n{i}": "x"' for i in range(6)) + "}", numbers)
    assert message.endswith("; and 1 more problem.")


def test_a_long_value_is_not_quoted_in_full() -> None:
    message = refusal('{"query": "x", "limit": "' + "9" * 1000 + '"}')
    assert len(message) < 400
    assert message.endswith("….")


def test_a_reference_that_does_not_resolve_leaves_the_judgement_to_the_server(caplog: pytest.LogCaptureFixture) -> None:
    schema = {"type": "object", "properties": {"x": {"$ref": "https://schemas.example.com/x.json"}}}
    assert parse('{"x": 1}', schema) == {"x": 1}
    assert "does not resolve" in caplog.text


def test_a_schema_in_an_older_draft_is_read_in_that_draft() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": True}},
    }
    assert object_schema(draft4) == draft4
    assert "less than or equal to the minimum of 0" in refusal('{"n": 0}', draft4)


def test_an_unknown_meta_schema_is_read_as_the_newest_draft() -> None:
    schema = {"$schema": "https://example.com/my-dialect", "type": "object", "required": ["a"]}
    assert object_schema(schema) == schema
    assert "'a' is a required property" in refusal("{}", schema)


def test_the_schema_offered_is_an_object_schema_or_none() -> None:
    assert object_schema({"properties": {"a": {"type": "string"}}}) == {
        "properties": {"a": {"type": "string"}},
        "type": "object",
    }
    assert object_schema({"type": "array"}) is None
    assert object_schema({"type": "object", "properties": 5}) is None  # not a valid schema
    assert object_schema(None) is None
    assert object_schema([]) is None


def test_arguments_nested_past_reading_are_refused() -> None:
    assert refusal("[" * 100_000 + "]" * 100_000) == "The arguments are nested too deeply to read."
