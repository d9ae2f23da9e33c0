"""The OpenAPI document: FastAPI's, plus what it cannot know, written in one place.

- `POST /sessions/{session_id}/messages` is a plain ASGI endpoint (`routes.SendMessage`), so
  FastAPI does not see its body model; its entry is written here from the same `SendMessageBody`
  schema that validates its requests.
- Every error answer is the envelope `{"error", "code"}` (`api/errors.py`), never FastAPI's
  `{"detail": [...]}`: each operation declares the statuses it may answer with (`ERROR_STATUSES`
  and the per-operation table `EXTRA_STATUSES`), all with the `Error` schema.
- Authentication is a bearer security scheme, not a header parameter of every operation.
- The streaming routes answer `text/event-stream`: the schema there is that of one event.
- What the schema models cannot say: the models this server allows, and the message length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from fastapi import FastAPI

from parley.api.routes import PREFIX, send_message_route
from parley.api.schemas import SendMessageBody
from parley.chat.events import StreamEvent
from parley.config import MAX_CONTENT_CHARS

MESSAGES_PATH = send_message_route.path
EVENTS_PATH = f"{PREFIX}/sessions/{{session_id}}/events"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "A message to show."},
        "code": {"type": "string", "description": "A stable code to branch on."},
        "resetsAt": {"type": "string", "description": "402: when the budget resets (ISO 8601, UTC)."},
        "retryAfter": {"type": "integer", "description": "429: seconds until a request may pass."},
        "reasons": {
            "type": "array",
            "items": {"type": "string"},
            "description": "503 from /readyz: why parley cannot serve turns now.",
        },
    },
    "additionalProperties": False,
}

ERROR_STATUSES: dict[int, str] = {
    400: "The body is not JSON, or asks for something not allowed here.",
    401: "A valid bearer token is required.",
    402: "The organization's budget cannot pay for this turn.",
    403: "The token may not do this: read-only, another organization, AI disabled, or not an admin token.",
    404: "No such session for this token.",
    408: "The body did not arrive within PARLEY_BODY_TIMEOUT_SECONDS.",
    409: "A turn is running, none is, or the session is closed or at its turn limit.",
    410: "The session has expired.",
    413: "The body or a field is too large.",
    422: "The request does not match the schema.",
    429: "Rate limited.",
    500: "Internal error.",
    501: "Not supported here: tool decisions and plans need a tool server.",
    503: "The database, the model server or the server running the turn is unavailable; try again.",
}

# What an operation may answer beyond what its shape implies (see `_statuses`).
EXTRA_STATUSES: dict[tuple[str, str], set[int]] = {
    ("post", f"{PREFIX}/sessions"): {400},
    ("post", MESSAGES_PATH): {400, 402, 409, 410, 429},
    ("get", EVENTS_PATH): {409},
    ("post", f"{PREFIX}/sessions/{{session_id}}/interrupt"): {409},
    # Decisions and plans: 501 without a tool server (PARLEY_MCP_CONFIG); 409 when nothing waits.
    ("post", f"{PREFIX}/sessions/{{session_id}}/approve/{{execution_id}}"): {409, 410, 501},
    ("post", f"{PREFIX}/sessions/{{session_id}}/tool-decisions"): {409, 410, 501},
    ("post", f"{PREFIX}/sessions/{{session_id}}/pause"): {409, 410, 501},
    ("post", f"{PREFIX}/sessions/{{session_id}}/approve-plan"): {409, 410, 501},
    ("post", f"{PREFIX}/sessions/{{session_id}}/abort-plan"): {409, 410, 501},
    # Admin tokens only (`parley tokens create --admin`).
    ("get", f"{PREFIX}/admin/sessions"): {403},
    ("get", f"{PREFIX}/admin/sessions/{{session_id}}"): {403},
    ("get", f"{PREFIX}/admin/security-events"): {403},
    ("get", f"{PREFIX}/admin/tool-executions"): {403},
    ("get", "/readyz"): {503},
}


def _event_names() -> list[str]:
    """The `event:` names of the stream, from the closed union of stream events."""
    names: list[str] = []
    for event in get_args(StreamEvent):
        literal = get_type_hints(event)["type"]
        if get_origin(literal) is ClassVar:
            (literal,) = get_args(literal)
        names.extend(get_args(literal))
    return names


# One server-sent event of a turn's stream; `data` is the event object as JSON (docs: README).
_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "id": {"type": "string", "description": "`<stream>-<seq>`, for Last-Event-ID."},
                "event": {"type": "string", "enum": _event_names()},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "retry": {"type": "integer"},
            },
        }
    }
}


def _statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses of one operation: from its shape, then from `EXTRA_STATUSES`."""
    statuses = {500}
    if path.startswith(PREFIX):
        statuses |= {401, 503}  # every API route reads the token from the database
        if method != "get":
            statuses.add(403)  # read-only tokens
    if "requestBody" in operation:
        statuses |= {400, 408, 413, 422}
    if operation.get("parameters"):
        statuses.add(422)
        if any(parameter["name"] == "orgId" for parameter in operation["parameters"]):
            statuses.add(403)  # an organization the caller does not belong to
    if "{session_id}" in path:
        statuses.add(404)
    return statuses | EXTRA_STATUSES.get((method, path), set())


def _send_message_operation() -> dict[str, Any]:
    return {
        "tags": ["ai"],
        "summary": "Send Message",
        "description": "Send a message; the answer is the turn's stream of server-sent events.",
        "operationId": "send_message",
        "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SendMessageBody"}}},
        },
        "responses": {
            "200": {"description": "The turn's events, one SSE frame each, until `done`.", "content": _STREAM},
        },
    }


def _document(schema: dict[str, Any], models: tuple[str, ...]) -> None:
    """Add the message route, the error answers and the security scheme to FastAPI's document."""
    paths: dict[str, dict[str, Any]] = schema.setdefault("paths", {})
    paths.setdefault(MESSAGES_PATH, {})["post"] = _send_message_operation()
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["SendMessageBody"] = SendMessageBody.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas["Error"] = ERROR_SCHEMA
    # Checked in the domain (an organization's budget may narrow the list: 400), told here.
    schemas["CreateSessionBody"]["properties"]["model"] = {
        "anyOf": [{"type": "string", "enum": list(models)}, {"type": "null"}],
        "description": "One of the models this server allows (default: the first).",
    }
    # Counted after trimming whitespace, and over the limit is 413, not 422: so not a pydantic constraint.
    schemas["SendMessageBody"]["properties"]["content"] |= {"minLength": 1, "maxLength": MAX_CONTENT_CHARS}
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, never sent
        schemas.pop(name, None)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith(PREFIX):
                operation["security"] = [{"bearer": []}]
                parameters = [
                    p
                    for p in operation.get("parameters", [])
                    if (p["in"], p["name"].lower()) != ("header", "authorization")
                ]
                operation["parameters"] = parameters
                if not parameters:
                    del operation["parameters"]
            if path == EVENTS_PATH:
                operation["responses"]["200"]["content"] = _STREAM
            responses = operation.setdefault("responses", {})
            for status in sorted(_statuses(method, path, operation)):
                responses[str(status)] = {"description": ERROR_STATUSES[status], "content": envelope}
    _link_created_session(paths)


def _link_created_session(paths: dict[str, dict[str, Any]]) -> None:
    """Links from `POST /sessions` to every operation on the session it created (by `id`), so a
    client generator or a stateful test knows where `session_id` comes from."""
    created = paths[f"{PREFIX}/sessions"]["post"]["responses"]["201"]
    links: dict[str, Any] = {}
    for path, operations in paths.items():
        if "{session_id}" not in path:
            continue
        for operation in operations.values():
            links[operation["operationId"]] = {
                "operationId": operation["operationId"],
                "parameters": {"session_id": "$response.body#/id"},
            }
    created["links"] = links


def install_openapi(app: FastAPI, *, models: tuple[str, ...]) -> None:
    """Make `app.openapi()` the document described in the module docstring; `models` are those a
    new session may ask for."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        _document(schema, models)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
