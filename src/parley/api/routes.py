"""HTTP routes under /api/v1/ai: thin translations to the chat domain.

Every route authenticates (401), checks permission (403) and sees only the caller's own sessions
in the caller's organizations (others: 404). Turns answer with the SSE stream of the turn.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from parley.api.auth import Principal, PrincipalCache, authenticate
from parley.api.schemas import (
    BudgetBody,
    CreateSessionBody,
    DecisionBody,
    PauseBody,
    PlanApprovalBody,
    RenameBody,
    SendMessageBody,
    StatusFilter,
    ToolDecisionsBody,
    execution_view,
    messages_view,
    plan_view,
    session_detail,
    session_summary,
    tool_view,
    usage_view,
)
from parley.api.sse import sse_response
from parley.chat.approvals import ApprovalDesk, Decided, Decision
from parley.chat.budgets import BudgetService
from parley.chat.catalog import SessionCatalog
from parley.chat.review import ReviewDesk
from parley.chat.sessions import SessionManager
from parley.errors import PayloadTooLargeError, ValidationFailedError
from parley.store.db import Database

if TYPE_CHECKING:
    from parley.api.operations import Readiness


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes need, built once by create_app and kept on app.state."""

    db: Database
    sessions: SessionManager
    approvals: ApprovalDesk
    catalog: SessionCatalog
    budgets: BudgetService
    review: ReviewDesk
    readiness: Readiness
    auth_cache: PrincipalCache
    heartbeat: float
    page_context_max_bytes: int
    provider_name: str
    clock: Callable[[], datetime]


async def services(request: Request) -> Services:  # async: a sync dependency runs in a thread
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


async def principal(
    request: Request, svc: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    who = await authenticate(svc.db, authorization, cache=svc.auth_cache)
    request.state.principal = who  # for the error handlers (api/errors.py)
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


async def writer(who: PrincipalDep) -> Principal:
    who.require_write()
    return who


WriterDep = Annotated[Principal, Depends(writer)]

PREFIX = "/api/v1/ai"
router = APIRouter(prefix=PREFIX, tags=["ai"])


def check_page_context(svc: Services, context: dict[str, Any] | None) -> None:
    """Refuse a page context that would not be stored as sent, or is over the size limit."""
    if context is None:
        return
    try:
        size = len(orjson.dumps(context))
    except orjson.JSONEncodeError as exc:  # integers past 64 bits, deep nesting, lone surrogates
        raise ValidationFailedError(f"pageContext cannot be stored: {exc}.") from None
    if _has_non_finite(context):  # orjson would store them as null
        raise ValidationFailedError(
            "pageContext: numbers must be finite (NaN, Infinity and numbers beyond ±1.8e308 cannot be stored)."
        )
    if size > svc.page_context_max_bytes:
        raise PayloadTooLargeError(f"pageContext is {size} bytes; the limit is {svc.page_context_max_bytes}.")


def _has_non_finite(value: object) -> bool:
    """Whether a parsed JSON value holds a float that is NaN or infinite (the JSON parsers read
    `NaN`, `Infinity` and `1e400` that way). Iterative: orjson has already bounded the depth."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


@router.post("/sessions", status_code=201)
async def create_session(body: CreateSessionBody, svc: ServicesDep, who: WriterDep) -> dict[str, Any]:
    check_page_context(svc, body.page_context)
    row = await svc.catalog.create(
        who.caller, org_id=body.org_id, title=body.title, page_context=body.page_context, model=body.model
    )
    return session_summary(row)


@router.get("/sessions")
async def list_sessions(
    svc: ServicesDep,
    who: PrincipalDep,
    status: StatusFilter | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
) -> dict[str, Any]:
    rows, total = await svc.catalog.list_sessions(who.caller, status=status, page=page, limit=limit)
    return {"data": [session_summary(r) for r in rows], "page": page, "limit": limit, "total": total}


@router.get("/sessions/search")
async def search_sessions(
    svc: ServicesDep,
    who: PrincipalDep,
    q: Annotated[str, Query(min_length=2, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
) -> dict[str, Any]:
    hits = await svc.catalog.search(who.caller, q, limit)
    return {
        "data": [
            {
                "id": row["id"],
                "title": row["title"],
                "matchedContent": _snippet(content, q),
                "createdAt": session_summary(row)["createdAt"],
            }
            for row, content in hits
        ]
    }


def _snippet(content: str | None, q: str) -> str | None:
    if content is None:
        return None
    at = content.lower().find(q.lower())
    start = max(at - 40, 0)
    return ("…" if start else "") + content[start : at + len(q) + 40] + ("…" if at + len(q) + 40 < len(content) else "")


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    found = await svc.catalog.get(who.caller, session_id)
    return {
        "session": session_detail(found.session),
        "messages": messages_view(found.messages),
        "pendingExecutions": [execution_view(row) for row in found.pending_executions],
        "plans": [plan_view(row) for row in found.plans],
    }


@router.get("/tools")
async def tools(
    svc: ServicesDep, who: PrincipalDep, org_id: Annotated[str | None, Query(alias="orgId", max_length=36)] = None
) -> dict[str, Any]:
    """The tools a new session may use (before there is one), and which of them ask."""
    org = svc.catalog.resolve_org(who.caller, org_id)
    listed = await svc.approvals.org_tools(who.tenant, org)
    return {"data": [tool_view(entry) for entry in listed]}


@router.get("/sessions/{session_id}/tools")
async def session_tools(session_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """The tools this session's model may use, and which of them ask before a call."""
    tools = await svc.approvals.session_tools(who.tenant, who.user_id, session_id)
    return {"data": [tool_view(entry) for entry in tools]}


@router.get("/sessions/{session_id}/tool-executions")
async def tool_executions(session_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    rows = await svc.catalog.executions(who.caller, session_id)
    return {"data": [execution_view(row) for row in rows]}


@router.patch("/sessions/{session_id}")
async def rename_session(session_id: str, body: RenameBody, svc: ServicesDep, who: WriterDep) -> dict[str, Any]:
    title = await svc.catalog.rename(who.caller, session_id, body.title)
    return {"success": True, "title": title}


@router.delete("/sessions/{session_id}")
async def close_session(session_id: str, svc: ServicesDep, who: WriterDep) -> dict[str, Any]:
    await svc.sessions.close(who.tenant, who.user_id, session_id)
    return {"success": True}


class SendMessage:
    """`POST /sessions/{session_id}/messages`: send a message; the answer is the turn's SSE stream.

    The route of every turn, so a plain ASGI endpoint on an ordinary route: FastAPI's request
    handling (dependency solving, its body handling, exit stacks) costs about ten times what this
    route does itself before the turn starts (docs/performance.md). It is inside the middleware
    stack like every route, its body is validated by the same schema, and every refusal is raised
    for the app's error handlers, as FastAPI raises them. Its OpenAPI entry is `send_message_openapi`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        svc: Services = scope["app"].state.services
        who = await authenticate(svc.db, request.headers.get("authorization"), cache=svc.auth_cache)
        request.state.principal = who
        body = await _message_body(await request.body())
        who.require_write()
        check_page_context(svc, body.page_context)
        session_id: str = scope["path_params"]["session_id"]
        sessions = svc.sessions
        sub = await sessions.send_message(
            who.tenant, who.user_id, session_id, body.content, body.page_context, body.choice()
        )
        # The response head can wait a little; the model requests of this turn and of the requests
        # queued behind it cannot (they are on every one's way to a first token). So the head yields
        # a few rounds of the loop first: on an idle server a round takes microseconds, and in a
        # burst the queued admissions and model requests go out before the heads. 1, 2, 4 and 8
        # rounds were measured: 4 is where the gain stops (docs/performance.md).
        for _ in range(4):
            await asyncio.sleep(0)
        response = sse_response(sub, heartbeat=svc.heartbeat, on_close=lambda: sessions.detach(session_id, sub))
        await response(scope, receive, send)


async def _message_body(raw: bytes) -> SendMessageBody:
    """The body as `SendMessageBody`, or the RequestValidationError FastAPI would raise for it."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return SendMessageBody.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


# Registered on the app's own router (create_app): FastAPI's included routers take only its own routes.
send_message_route = Route(f"{PREFIX}/sessions/{{session_id}}/messages", SendMessage(), methods=["POST"])


@router.get("/sessions/{session_id}/events", response_class=StreamingResponse)
async def session_events(
    session_id: str,
    svc: ServicesDep,
    who: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    sub = await svc.sessions.attach(who.tenant, who.user_id, session_id, last_event_id)
    return sse_response(sub, heartbeat=svc.heartbeat, on_close=lambda: svc.sessions.detach(session_id, sub))


@router.post("/sessions/{session_id}/interrupt")
async def interrupt(session_id: str, svc: ServicesDep, who: WriterDep) -> dict[str, Any]:
    await svc.sessions.interrupt(who.tenant, who.user_id, session_id)
    return {"success": True, "interrupted": True}


def _decided(svc: Services, session_id: str, decided: Decided, fields: dict[str, Any]) -> Response:
    """The continuation's stream when this decision settled the last waiting call, else JSON."""
    sub = decided.stream
    if sub is None:
        return JSONResponse({"success": True, **fields, "pending": decided.pending})
    return sse_response(sub, heartbeat=svc.heartbeat, on_close=lambda: svc.sessions.detach(session_id, sub))


_DECISION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON `{success, approved, pending}` while other calls of the reply wait; the "
        "continuation's SSE stream (`text/event-stream`) when this decision settled the last of them.",
        "content": {"text/event-stream": {}},
    }
}


@router.post("/sessions/{session_id}/approve/{execution_id}", responses=_DECISION_RESPONSES)
async def approve(session_id: str, execution_id: str, body: DecisionBody, svc: ServicesDep, who: WriterDep) -> Response:
    decision = Decision(execution_id, body.approved, body.reason, body.always)
    decided = await svc.approvals.decide(who.tenant, who.user_id, session_id, [decision])
    return _decided(svc, session_id, decided, {"approved": body.approved})


@router.post("/sessions/{session_id}/tool-decisions", responses=_DECISION_RESPONSES)
async def tool_decisions(session_id: str, body: ToolDecisionsBody, svc: ServicesDep, who: WriterDep) -> Response:
    decisions = [Decision(d.execution_id, d.approved, d.reason, d.always) for d in body.decisions]
    if len({d.execution_id for d in decisions}) != len(decisions):
        raise ValidationFailedError("Each call may be decided once per request.")
    decided = await svc.approvals.decide(who.tenant, who.user_id, session_id, decisions)
    return _decided(svc, session_id, decided, {"decided": len(decisions)})


@router.post("/sessions/{session_id}/pause")
async def pause(session_id: str, body: PauseBody, svc: ServicesDep, who: WriterDep) -> dict[str, Any]:
    state = await svc.approvals.pause(who.tenant, who.user_id, session_id, paused=body.paused)
    return {"success": True, "paused": state.paused, "effectiveMode": state.effective_mode}


@router.post("/sessions/{session_id}/approve-plan", responses=_DECISION_RESPONSES)
async def approve_plan(session_id: str, body: PlanApprovalBody, svc: ServicesDep, who: WriterDep) -> Response:
    decided = await svc.approvals.decide_plan(who.tenant, who.user_id, session_id, approved=body.approved)
    return _decided(svc, session_id, decided, {"approved": body.approved})


@router.post("/sessions/{session_id}/abort-plan", responses=_DECISION_RESPONSES)
async def abort_plan(session_id: str, svc: ServicesDep, who: WriterDep) -> Response:
    decided = await svc.approvals.abort_plan(who.tenant, who.user_id, session_id)
    if decided is None:
        return JSONResponse({"success": True})
    return _decided(svc, session_id, decided, {})


@router.get("/usage")
async def usage(
    svc: ServicesDep, who: PrincipalDep, org_id: Annotated[str | None, Query(alias="orgId")] = None
) -> dict[str, Any]:
    view = await svc.budgets.view(who.caller, org_id)  # one transaction for usage and budget
    return {"daily": usage_view(view.daily), "monthly": usage_view(view.monthly), "budget": view.as_json()}


@router.put("/budget")
async def put_budget(
    body: BudgetBody,
    svc: ServicesDep,
    who: WriterDep,
    org_id: Annotated[str | None, Query(alias="orgId")] = None,
) -> dict[str, Any]:
    view = await svc.budgets.update(who.caller, org_id, body.changes())
    return {"success": True, "budget": view.as_json()}
