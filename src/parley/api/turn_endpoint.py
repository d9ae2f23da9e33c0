"""`POST /api/v1/ai/sessions/{session_id}/messages` as a plain ASGI endpoint: the route of every turn.

FastAPI's request handling (dependency solving for services, principal and writer, the pydantic
body model, its exit stacks, the included router's matching) cost several times the CPU of what
this route does itself before the turn starts. This endpoint does that work directly. The app
(`app.ParleyAPI`) sends turns to it ahead of its middleware stack, with the security headers and
the body limit around it, and it answers unexpected errors with the app's 500 itself. It is also
the first route of the router; the FastAPI route `routes.send_message` stays declared for the
OpenAPI schema and is never reached.

The answers are the FastAPI route's, refusal for refusal, because the checks run in its order:

1. the body is read (a body over the limit was already refused with 413 by the middleware);
2. the token: 401 before any other refusal;
3. a body declared as JSON that does not parse: 400 `malformed_json`; bytes that are not text at
   all: 400 `http_error`; then 403 when the token is read-only;
4. the body's shape: 422 with pydantic's messages (the usual `{"content": "..."}` skips pydantic);
5. the size of pageContext (413), then the turn itself (404, 409, 410, 402, 429, ...).
"""

from __future__ import annotations

import asyncio
import email.message
import json
import logging
import re
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from parley.api.auth import authenticate
from parley.api.errors import describe_validation_errors, envelope, error_response
from parley.api.routes import PREFIX, Services, check_page_context
from parley.api.schemas import SendMessageBody
from parley.api.sse import sse_response
from parley.errors import ParleyError

log = logging.getLogger("parley.api")
TURN_PATH = f"{PREFIX}/sessions/{{session_id}}/messages"
_TURN_PATH = re.compile(re.escape(PREFIX) + "/sessions/([^/]+)/messages")  # as the Route matches it

_HEAD_YIELDS = 4  # 1, 2, 4 and 8 measured: 4 is where the gain stops
_NO_BODY = object()  # an empty body, which FastAPI reported as a missing one
_FIELDS = frozenset({"content", "pageContext"})
# orjson reads integers past 64 bits as floats where the json module keeps them exact; a body with
# a run of 19 digits anywhere goes to the json module.
_LONG_DIGITS = re.compile(rb"\d{19}")


class _MalformedJSON(Exception):
    """The body is declared as JSON and is text, but not JSON."""


class _UnreadableBody(Exception):
    """The body could not be read as text (or the client left while sending it)."""


class _InvalidBody(Exception):
    """The body is not a message (no body, not an object, wrong fields); the argument is the 422 message."""


def turn_route() -> Route:
    return Route(TURN_PATH, TurnEndpoint(), methods=["POST"], include_in_schema=False)


def turn_session_id(path: str) -> str | None:
    """The session id when `path` is the turn route's, else None."""
    match = _TURN_PATH.fullmatch(path)
    return match.group(1) if match is not None else None


class TurnEndpoint:
    """The ASGI app of the route (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        svc: Services = scope["app"].state.services
        response: Response
        try:
            response = await _turn(svc, scope, receive)
        except ParleyError as exc:
            response = error_response(exc)
        except Exception:  # as the app's handler answers it (this route may run outside the stack)
            log.exception("unhandled error")
            response = envelope(500, "internal_error", "Internal error. Please try again.")
        await response(scope, receive, send)


async def _turn(svc: Services, scope: Scope, receive: Receive) -> Response:
    authorization, content_type = _request_headers(scope["headers"])
    body: Any = _NO_BODY
    unreadable: Response | None = None
    try:
        body = await _read_body(receive, content_type)
    except _UnreadableBody:
        unreadable = envelope(400, "http_error", "There was an error parsing the body")
    except _MalformedJSON:
        unreadable = envelope(400, "malformed_json", "The request body is not valid JSON.")
    # 401 before any other refusal: a caller without a valid token learns nothing of the body.
    who = await authenticate(svc.db, authorization, cache=svc.auth_cache)
    if unreadable is not None:
        return unreadable  # before 403, as FastAPI parsed the body before the writer check
    who.require_write()
    try:
        content, page_context = _message(body)
    except _InvalidBody as exc:
        return envelope(422, "validation_error", str(exc))
    check_page_context(svc, page_context)
    session_id: str = scope["path_params"]["session_id"]
    sessions = svc.sessions
    sub = await sessions.send_message(who.tenant, who.user_id, session_id, content, page_context)
    # The response head can wait a little; the model requests of this turn and of the requests
    # queued behind it cannot (they are on every one's way to a first token). So the head yields a
    # few rounds of the loop first: on an idle server a round takes microseconds, and in a burst
    # the queued admissions and model requests go out before the heads (docs/performance.md).
    for _ in range(_HEAD_YIELDS):
        await asyncio.sleep(0)
    return sse_response(sub, heartbeat=svc.heartbeat, on_close=lambda: sessions.detach(session_id, sub))


def _request_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """Authorization and Content-Type; the first of repeated ones, as Starlette's `Headers.get`."""
    authorization = content_type = None
    for name, value in headers:
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
    return authorization, content_type


async def _read_body(receive: Receive, content_type: str | None) -> Any:
    """The body as FastAPI handed it to validation: parsed JSON, raw bytes, or `_NO_BODY`."""
    message = await receive()
    chunks: list[bytes] = []
    while True:
        if message["type"] != "http.request":
            raise _UnreadableBody  # the client left while sending
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
        message = await receive()
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not raw:
        return _NO_BODY
    if not _declares_json(content_type):
        return raw  # validated as bytes, which the model refuses (422)
    return _parse_json(raw)


def _declares_json(content_type: str | None) -> bool:
    """FastAPI's rule: no Content-Type is not JSON; application/json and application/*+json are."""
    if not content_type:
        return False
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _parse_json(raw: bytes) -> Any:
    """orjson where it agrees with the json module FastAPI used; the json module decides the rest
    (NaN, a byte order mark, UTF-16, lone surrogates, long integers), so the same bodies pass."""
    if _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _MalformedJSON from exc
    except Exception as exc:  # not text (UnicodeDecodeError), nested too deep (RecursionError)
        raise _UnreadableBody from exc


def _message(body: Any) -> tuple[str, dict[str, Any] | None]:
    """content and pageContext, as `SendMessageBody` validates them."""
    if type(body) is dict and type(body.get("content")) is str and body.keys() <= _FIELDS:
        page_context = body.get("pageContext")
        if page_context is None or type(page_context) is dict:
            return body["content"], page_context
    if body is _NO_BODY:
        raise _InvalidBody(describe_validation_errors([{"loc": ("body",), "msg": "Field required"}]))
    try:
        model = SendMessageBody.model_validate(body, from_attributes=True)  # as FastAPI validates
    except ValidationError as exc:
        raise _InvalidBody(describe_validation_errors(exc.errors(include_url=False)) or "Invalid request.") from None
    return model.content, model.page_context
