"""Review routes: flags on sessions, and what an admin token reads (thin, over `chat/review.py`).

`POST /sessions/{id}/flag` is any writer's, on its own session (an admin's, on any session of its
organizations); `DELETE /sessions/{id}/flag` and everything under `/admin` need an admin token
(403 otherwise). Sessions outside the token's organizations look absent (404), as everywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from parley.api.routes import PREFIX, PrincipalDep, ServicesDep, WriterDep
from parley.api.schemas import (
    FlagBody,
    StatusFilter,
    admin_session_view,
    as_utc,
    audit_view,
    execution_view,
    iso,
    messages_view,
    session_detail,
)

router = APIRouter(prefix=PREFIX, tags=["review"])


@router.post("/sessions/{session_id}/flag")
async def flag_session(
    session_id: str, svc: ServicesDep, who: WriterDep, body: FlagBody | None = None
) -> dict[str, Any]:
    await svc.review.flag(who.caller, session_id, body.reason if body is not None else None)
    return {"success": True}


@router.delete("/sessions/{session_id}/flag")
async def unflag_session(session_id: str, svc: ServicesDep, who: WriterDep) -> dict[str, Any]:
    await svc.review.unflag(who.caller, session_id)
    return {"success": True}


@router.get("/admin/sessions")
async def admin_sessions(
    svc: ServicesDep,
    who: PrincipalDep,
    flagged: bool | None = None,
    user_id: Annotated[str | None, Query(alias="userId", max_length=36)] = None,
    status: StatusFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """Every session of the admin's organizations (flagged first with `flagged=true`)."""
    rows, total = await svc.review.sessions(
        who.caller, flagged=flagged, user_id=user_id, status=status, offset=offset, limit=limit
    )
    return {"data": [admin_session_view(row) for row in rows], "limit": limit, "offset": offset, "total": total}


@router.get("/admin/sessions/{session_id}")
async def admin_session(session_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """A session's transcript, for review (the read is audited: `ai.admin.session.read`)."""
    found = await svc.review.transcript(who.caller, session_id)
    return {
        "session": session_detail(found.session) | {"userEmail": found.session.get("user_email")},
        "messages": messages_view(found.messages),
        "executions": [execution_view(row) for row in found.executions],
    }


@router.get("/admin/security-events")
async def security_events(
    svc: ServicesDep,
    who: PrincipalDep,
    since: datetime | None = None,
    action: Annotated[str | None, Query(min_length=1, max_length=96)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> dict[str, Any]:
    """Security events (`ai.security.*`) and tool calls (`ai.tool.*`) since `since` (default: 7
    days), newest first; or the events of one `action`."""
    rows = await svc.review.security_events(who.caller, since=as_utc(since), action=action, limit=limit)
    return {"data": [audit_view(row) for row in rows]}


@router.get("/admin/tool-executions")
async def tool_executions(
    svc: ServicesDep,
    who: PrincipalDep,
    since: datetime | None = None,
    until: datetime | None = None,
    status: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    tool_name: Annotated[str | None, Query(alias="toolName", min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> dict[str, Any]:
    """Tool calls in a window (default: the last day): by status, by tool, over time (hourly up to
    two days, else daily), and the newest of them."""
    report = await svc.review.tool_executions(
        who.caller, since=as_utc(since), until=as_utc(until), status=status, tool_name=tool_name, limit=limit
    )
    return {
        "since": iso(report.since),
        "until": iso(report.until),
        "bucket": report.bucket,
        "summary": {"total": report.total, "byStatus": report.by_status, "byTool": report.by_tool},
        "timeSeries": report.series,
        "executions": [execution_view(row) for row in report.executions],
    }
