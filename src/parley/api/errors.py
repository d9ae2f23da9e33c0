"""One error envelope everywhere: `{"error": message, "code": CODE}`.

Maps parley's error tree, FastAPI's validation errors (malformed JSON -> 400, schema -> 422),
Starlette's HTTP errors (unknown route, wrong method) and anything unexpected (500, logged, never
shown) to the envelope. A 404 for a session that exists in an organization the caller cannot see
is recorded in the audit trail (`ai.security.cross_tenant_access`) on the way out: every session
route raises `SessionNotFoundError`, so this is the one place that sees them all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from parley.errors import (
    MalformedJSONError,
    ParleyError,
    RateLimitedError,
    SessionNotFoundError,
    ValidationFailedError,
    error_for_status,
)

log = logging.getLogger("parley.api")


def error_response(exc: ParleyError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The envelope of an error of the tree, with the headers its kind calls for."""
    all_headers = dict(headers or {})
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, RateLimitedError) and retry_after is not None:
        all_headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if exc.status_code == 401:
        all_headers["WWW-Authenticate"] = "Bearer"
    body = {"error": exc.message, "code": exc.error_code(), **exc.extra()}
    return JSONResponse(body, status_code=exc.status_code, headers=all_headers or None)


# Strict write bodies refuse look-alikes ("yes", "5"); say which JSON type the field takes.
_STRICT_TYPE_MESSAGES = {
    "bool_type": "must be a JSON boolean (true or false)",
    "int_type": "must be a JSON integer",
    "string_type": "must be a JSON string",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
}


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """`loc: msg` of the first five errors, without the body/query/path prefixes."""
    parts = []
    for err in errors[:5]:
        where = tuple(err.get("loc", ()))
        loc = ".".join(str(p) for p in where if p not in ("body", "query", "path"))
        message = str(err.get("msg"))
        if where[:1] == ("body",):
            message = _STRICT_TYPE_MESSAGES.get(err.get("type", ""), message)
        parts.append(f"{loc or 'body'}: {message.removeprefix('Value error, ')}")
    return "; ".join(parts)


async def _authentication_refusal(request: Request) -> JSONResponse | None:
    from parley.api.auth import authenticate

    services = getattr(request.app.state, "services", None)
    if services is None or not request.url.path.startswith("/api/"):
        return None
    try:
        await authenticate(services.db, request.headers.get("authorization"), cache=services.auth_cache)
    except ParleyError as exc:
        return error_response(exc)
    return None


async def _note_foreign_session(request: Request) -> None:
    """After a 404 on a session route: record it if the session is another organization's."""
    from parley.chat.audit import note_foreign_session

    services = getattr(request.app.state, "services", None)
    principal = getattr(request.state, "principal", None)
    session_id = request.path_params.get("session_id")
    if services is None or principal is None or not isinstance(session_id, str):
        return
    await note_foreign_session(
        services.db,
        principal.tenant,
        user_id=principal.user_id,
        home_org_id=principal.home_org_id,
        session_id=session_id,
        now=services.clock(),
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method the path answers, for `Allow` on 405: Starlette names only those of the first
    route that matched the path, and here each method of a path is a route of its own. Asked of
    the routes themselves (`matches`), whatever groups them; a mount (the page's files) answers
    every method and refuses the others itself, so it is not asked."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]
    allowed = [m for m in _METHODS if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ParleyError)
    async def _parley(request: Request, exc: ParleyError) -> JSONResponse:
        if isinstance(exc, SessionNotFoundError):
            await _note_foreign_session(request)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI validates the body and query before running dependencies: authenticate here,
        # so a caller without a valid token gets 401 and never a hint about the request.
        refusal = await _authentication_refusal(request)
        if refusal is not None:
            return refusal
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(MalformedJSONError())
        return error_response(ValidationFailedError(describe_validation_errors(errors) or "Invalid request."))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that is not text at all: the token first, as above
            refusal = await _authentication_refusal(request)
            if refusal is not None:
                return refusal
        message = exc.detail if isinstance(exc.detail, str) else None
        headers = exc.headers
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        return error_response(error_for_status(exc.status_code, message), headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Answered by Starlette's error middleware, inside the request context's (which stamps it).
        log.exception("unhandled error", exc_info=exc)
        return error_response(ParleyError())
