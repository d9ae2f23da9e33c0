"""The OpenAPI document: FastAPI's, plus the routes it does not generate itself.

`POST /sessions/{session_id}/messages` is a plain ASGI endpoint (`routes.SendMessage`), so FastAPI
does not see its body model; its entry is written here from the same `SendMessageBody` schema
that validates its requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from parley.api.routes import send_message_route
from parley.api.schemas import SendMessageBody

MESSAGES_PATH = send_message_route.path


def _error(description: str) -> dict[str, Any]:
    envelope = {
        "type": "object",
        "required": ["error", "code"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
    }
    return {"description": description, "content": {"application/json": {"schema": envelope}}}


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
            "200": {
                "description": "The turn's events, one SSE frame each, until `done`.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": _error("The body is not JSON."),
            "401": _error("A valid bearer token is required."),
            "403": _error("The token may not write, or AI is disabled for the organization."),
            "404": _error("No such session for this token."),
            "409": _error("A turn is running, or the session is closed or at its turn limit."),
            "410": _error("The session has expired."),
            "413": _error("The message or the body is too large."),
            "422": _error("The body is not a message."),
            "429": _error("Rate limited."),
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` include the routes FastAPI does not document itself."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("paths", {}).setdefault(MESSAGES_PATH, {})["post"] = _send_message_operation()
        body = SendMessageBody.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {})["SendMessageBody"] = body
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
