"""Every request gets an id: the client's own `X-Request-ID` when it is a sane one, else a new one.

`RequestContextMiddleware` is the outermost layer of the app (outside Starlette's error
middleware, so a 500 carries it too): it puts the id, the client's address and its user agent in
the request context (`parley.context.REQUEST`), where the audit trail and the log filter read
them, and stamps every response, the turn's SSE stream included, with `X-Request-ID` and the
headers every answer gets (`parley.web.COMMON_HEADERS`: `nosniff`, `no-referrer`, unless the
route set its own). One layer for both: its `send` wraps every write of every stream. A turn
started by the request runs in tasks that inherit the context, so its log lines carry the id.

The client's address is the one uvicorn reports: behind a proxy it trusts (`--forwarded-allow-ips`),
the forwarded one.

Imports: standard library, starlette types, parley.context, parley.web (the common headers).
"""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.context import REQUEST, RequestInfo
from parley.web import COMMON_HEADERS

HEADER = "X-Request-ID"
_HEADER_KEY = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
MAX_USER_AGENT = 256
_COMMON = tuple((name.lower().encode(), value.encode()) for name, value in COMMON_HEADERS.items())


def new_request_id() -> str:
    return secrets.token_hex(12)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given: bytes | None = None
        agent: bytes | None = None
        for name, value in scope["headers"]:
            if name == _HEADER_KEY:
                given = value
            elif name == b"user-agent":
                agent = value
        raw = given if given is not None and _VALID_ID.fullmatch(given) else new_request_id().encode()
        client = scope.get("client")
        user_agent = agent[:MAX_USER_AGENT].decode("latin-1") if agent else None
        token = REQUEST.set(RequestInfo(raw.decode(), client[0] if client else None, user_agent))
        header = (_HEADER_KEY, raw)

        async def send_stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [pair for pair in message.get("headers", ()) if pair[0].lower() != _HEADER_KEY]
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in _COMMON if pair[0] not in present)
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_stamped)
        # Not reset when the app raised: the server logs the error next, in this request's task.
        REQUEST.reset(token)
