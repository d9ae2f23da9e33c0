"""Who and what the code running now works for, beyond the tenant: the HTTP request that asked (its
id, the client's address and user agent) and the turn it runs, in context variables.

The request's middleware (`api/request_context.py`) sets `REQUEST`; the session manager binds the
turn (`bind_turn`) before it starts the turn's tasks, which inherit both (a task copies the context
it is created in). The audit trail reads them (`chat/audit.py`), the log filter too (`logs.py`):
the domain learns where a request came from without importing the web layer.

Leaf module: standard library only.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestInfo:
    request_id: str
    client_ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class TurnInfo:
    org_id: str
    session_id: str
    turn_id: str  # the reply's message id (the turn lease's token)


REQUEST: ContextVar[RequestInfo | None] = ContextVar("parley_request", default=None)
TURN: ContextVar[TurnInfo | None] = ContextVar("parley_turn", default=None)


def current_request() -> RequestInfo | None:
    return REQUEST.get()


def current_turn() -> TurnInfo | None:
    return TURN.get()


def bind_turn(org_id: str, session_id: str, turn_id: str) -> None:
    """The turn the code that runs from here on (in this task and the tasks it creates) belongs to."""
    TURN.set(TurnInfo(org_id, session_id, turn_id))
