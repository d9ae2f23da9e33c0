"""The audit trail: what happened, by whom, from where, in the transaction that made it happen.

`record(tx, ...)` appends an event inside the caller's unit of work, beside the change it
records, so a change that rolls back leaves no event and an event never describes a change that
did not happen. The request's id, the client's address and user agent come from the request
context (`parley.context`), set by the web layer's middleware.

A refusal rolls its unit back, so security events (`ai.security.*`: a revoked token used, a
session of another organization asked for, a rate limit or a budget that refused) are written by
`record_refusal` in a unit of their own, after the refusal; one that cannot be written is logged,
never raised in place of the refusal.

Events carry ids, names and small facts (`detail`), never message content or secrets.

Imports chat-neutral parts only: parley.context, parley.store.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NotRequired, TypedDict, Unpack

from parley.context import current_request
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.sql import Record, Tx
from parley.store.tenancy import Tenant

log = logging.getLogger("parley.audit")

# Actions (the names the reference API audits, plus parley's own).
SESSION_CREATE = "ai.session.create"
SESSION_CLOSE = "ai.session.close"
SESSION_FLAG = "ai.session.flag"
SESSION_UNFLAG = "ai.session.unflag"
MESSAGE_SEND = "ai.message.send"
MESSAGE_INTERRUPT = "ai.message.interrupt"
BUDGET_UPDATE = "ai.budget.update"
TOOL_APPROVAL_UPDATE = "ai.tool_approval.update"
ADMIN_SESSION_READ = "ai.admin.session.read"
TOKEN_REVOKED = "ai.security.revoked_token_used"
CROSS_TENANT = "ai.security.cross_tenant_access"
RATE_LIMITED = "ai.security.rate_limited"
BUDGET_REFUSED = "ai.security.budget_refused"


def tool_action(tool_name: str) -> str:
    """The action of a tool call: `ai.tool.<server__tool>`."""
    return f"ai.tool.{tool_name}"


class Subject(TypedDict):
    """Whom and what an event is about, and when: the keyword arguments of `event`, `record`
    and `record_refusal`."""

    org_id: str | None
    user_id: str | None
    now: datetime
    session_id: NotRequired[str | None]
    detail: NotRequired[dict[str, Any] | None]


def event(action: str, **subject: Unpack[Subject]) -> Record:
    """One row of `ai_audit_events`, stamped with the request the code runs for (if any)."""
    request = current_request()
    return {
        "created_at": subject["now"],
        "action": action,
        "org_id": subject["org_id"],
        "actor_user_id": subject["user_id"],
        "session_id": subject.get("session_id"),
        "request_id": request.request_id if request is not None else None,
        "client_ip": request.client_ip if request is not None else None,
        "user_agent": request.user_agent if request is not None else None,
        "detail": subject.get("detail"),
    }


async def record(tx: Tx, action: str, **subject: Unpack[Subject]) -> None:
    """Append an event in the caller's transaction."""
    await repo.insert_audit_event(tx, event(action, **subject))


async def record_refusal(db: Database, action: str, **subject: Unpack[Subject]) -> None:
    """Append a security event in a unit of its own (the refused change was rolled back). Never
    raises: the caller is answering with the refusal, which must not become another error."""
    org_id, user_id = subject["org_id"], subject["user_id"]
    tenant = Tenant.for_org(org_id, user_id) if org_id is not None else Tenant.system()
    try:
        async with db.unit(tenant) as tx:
            await record(tx, action, **subject)
    except Exception:
        log.exception("could not record the audit event %s", action)


async def note_foreign_session(
    db: Database, tenant: Tenant, *, user_id: str, home_org_id: str | None, session_id: str, now: datetime
) -> bool:
    """After a 404 for `session_id`: if the session exists in an organization the caller cannot
    see, record it (`ai.security.cross_tenant_access`, in the caller's organization). True when
    it did."""
    if tenant.sees_all:
        return False
    try:
        async with db.unit(Tenant.system(), readonly=True) as tx:
            found = await repo.get_session(tx, Tenant.system(), session_id)
    except Exception:
        log.exception("could not look up session %s after a 404", session_id)
        return False
    if found is None or tenant.can_see(found["org_id"]):
        return False
    org = home_org_id if home_org_id is not None else min(tenant.org_ids, default=None)
    await record_refusal(db, CROSS_TENANT, org_id=org, user_id=user_id, now=now, session_id=session_id)
    return True
