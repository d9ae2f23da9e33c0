"""A model's tool arguments: JSON text in, an object that fits the tool's input schema out.

The model reads what went wrong, so `InvalidArguments.message` says it in a sentence it can act
on: where the JSON broke, or which argument breaks which rule of the schema. Schemas are read
with the `jsonschema` library in the draft they declare (2020-12 when they declare none), with
no network: a `$ref` resolves within the schema or not at all.

Imports: standard library, jsonschema (and its `referencing`).
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable

log = logging.getLogger("parley.tools")

ANY_OBJECT: dict[str, Any] = {"type": "object"}
_MAX_REPORTED = 5  # schema violations told to the model at once
_MAX_MESSAGE = 300  # characters of one violation (a message may quote the whole value)


class InvalidArguments(Exception):
    """The arguments cannot be used; `message` is a sentence for the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def object_schema(schema: object) -> dict[str, Any] | None:
    """The tool's input schema as offered to a model (an object schema), or None when it has no
    usable one (the caller offers `ANY_OBJECT`)."""
    if not isinstance(schema, dict):
        return None
    if "type" not in schema:
        schema = {**schema, "type": "object"}
    if schema.get("type") != "object":
        return None
    try:
        _validator_class(schema).check_schema(schema)
    except SchemaError:
        return None
    return schema


def schema_validator(schema: dict[str, Any]) -> Validator:
    """A validator of `schema` (one checked by `object_schema`, or `ANY_OBJECT`)."""
    return _validator_class(schema)(schema, registry=Registry())


def _validator_class(schema: dict[str, Any]) -> type[Validator]:
    # An unknown `$schema` makes jsonschema warn and use its newest draft: the newest draft is the
    # best reading of a schema a server wrote, and the warning is for the schema's author.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        found: type[Validator] = validator_for(schema, default=Draft202012Validator)
    return found


def parse_arguments(text: str, validator: Validator) -> dict[str, Any]:
    """The arguments in `text` (blank means none), checked by `validator`."""
    if not text.strip():
        text = "{}"  # some models send nothing for a call without arguments
    try:
        # strict=False: a raw newline or tab inside a string (small local models write them) is
        # read as that character, not refused.
        arguments = json.loads(text, parse_constant=_not_json, strict=False)
    except json.JSONDecodeError as exc:
        raise InvalidArguments(
            f"The arguments are not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            f"(character {exc.pos}). Send one JSON object that matches the tool's input schema."
        ) from exc
    except _NotJson as exc:
        raise InvalidArguments(
            f"The arguments are not valid JSON: {exc.args[0]} is not a JSON value. Send one JSON object "
            "that matches the tool's input schema."
        ) from exc
    except RecursionError as exc:
        raise InvalidArguments("The arguments are nested too deeply to read.") from exc
    if not isinstance(arguments, dict):
        raise InvalidArguments(f"The arguments must be a JSON object of named arguments, not {_json_kind(arguments)}.")
    try:
        errors = sorted(validator.iter_errors(arguments), key=lambda error: (error.json_path, error.message))
    except Unresolvable as exc:  # the schema's own fault: let the server judge the arguments
        log.warning("a tool's input schema has a reference that does not resolve (%s); not checked", exc)
        return arguments
    if errors:
        raise InvalidArguments(_violations(errors))
    return arguments


class _NotJson(ValueError):
    pass


def _not_json(constant: str) -> Any:
    raise _NotJson(constant)  # NaN and Infinity: Python reads them, JSON has no such values


def _violations(errors: list[ValidationError]) -> str:
    told = [f"at {error.json_path}: {_short(error.message)}" for error in errors[:_MAX_REPORTED]]
    more = len(errors) - len(told)
    return (
        "The arguments do not match the tool's input schema: "
        + "; ".join(told)
        + (f"; and {more} more problem{'s' if more > 1 else ''}" if more else "")
        + "."
    )


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _json_kind(value: object) -> str:
    match value:
        case list():
            return "an array"
        case str():
            return "a string"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case None:
            return "null"
    return "a value of another kind"
