"""Session records for the API: create, list, search, read, rename, usage.

Everything here runs in the caller's tenant context and sees only the caller's own sessions in
the caller's organizations (others look absent: 404). Turns live in `sessions.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from parley.chat import audit
from parley.chat.clock import utc_now
from parley.errors import ModelNotAllowedError, PermissionDeniedError, SessionNotFoundError, ValidationFailedError
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.ids import new_id
from parley.store.sql import Record
from parley.store.tenancy import Tenant


@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """The authenticated principal as the domain sees it."""

    tenant: Tenant
    user_id: str
    home_org_id: str | None  # the organization of an organization-scoped token
    is_admin: bool = False  # reviews every session of its organizations (`review.py`)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSessionDefaults:
    model: str  # the default; the session stores the model that really runs
    system_prompt: str
    max_turns: int
    allowed_models: tuple[str, ...] = ()

    def choose_model(self, requested: str | None, allowed: tuple[str, ...] | None = None) -> str:
        """The model a new session runs: asked for and allowed, else the default.

        `allowed` is the organization's list when its budget has one, else the configured list.
        """
        allowed = allowed or self.allowed_models or (self.model,)
        if requested is None:
            return self.model if self.model in allowed else allowed[0]
        if requested not in allowed:
            raise ModelNotAllowedError(requested, allowed)
        return requested


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    session: Record
    messages: Sequence[Record]
    pending_executions: Sequence[Record]
    plans: Sequence[Record]


PLAN_STATUSES = ("pending", "approved", "rejected", "completed", "aborted", "expired")


class SessionCatalog:
    def __init__(self, db: Database, defaults: NewSessionDefaults, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.defaults = defaults
        self.clock = clock

    def resolve_org(self, caller: Caller, requested: str | None) -> str:
        """Which organization a new session belongs to: asked for, else the caller's own."""
        if requested is not None:
            if not caller.tenant.can_see(requested):
                raise PermissionDeniedError("Access denied to this organization.")
            return requested
        if caller.home_org_id is not None:
            return caller.home_org_id
        if len(caller.tenant.org_ids) == 1:
            return next(iter(caller.tenant.org_ids))
        raise ValidationFailedError("orgId is required for tokens that span several organizations.")

    async def create(
        self,
        caller: Caller,
        *,
        org_id: str | None,
        title: str | None,
        page_context: dict[str, Any] | None,
        model: str | None = None,
    ) -> Record:
        org = self.resolve_org(caller, org_id)
        now = self.clock()
        row: Record = dict(
            id=new_id(),
            org_id=org,
            user_id=caller.user_id,
            status="active",
            type="general",
            title=" ".join(title.split())[:255] or None if title else None,
            model=self.defaults.model,
            system_prompt=self.defaults.system_prompt,
            context_snapshot=page_context or None,
            total_input_tokens=0,
            total_output_tokens=0,
            total_cache_read_tokens=0,
            total_cache_write_tokens=0,
            total_cost_cents=0,
            turn_count=0,
            message_count=0,
            max_turns=self.defaults.max_turns,
            last_activity_at=now,
            created_at=now,
            updated_at=now,
        )
        async with self.db.unit(caller.tenant) as tx:
            if await repo.find_organization(tx, org_id=org) is None:
                raise ValidationFailedError("Unknown organization.")
            budget = await repo.get_budget(tx, org)
            if budget is not None:
                if budget["max_turns_per_session"] is not None:
                    row["max_turns"] = budget["max_turns_per_session"]
                row["model"] = self.defaults.choose_model(model, tuple(budget["allowed_models"] or ()))
            else:
                row["model"] = self.defaults.choose_model(model)
            await repo.insert_session(tx, row)
            await audit.record(
                tx,
                audit.SESSION_CREATE,
                org_id=org,
                user_id=caller.user_id,
                now=now,
                session_id=row["id"],
                detail={"model": row["model"]},
            )
        return row

    async def list_sessions(
        self, caller: Caller, *, status: str | None, page: int, limit: int
    ) -> tuple[Sequence[Record], int]:
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            return await repo.list_sessions(
                tx,
                caller.tenant,
                owner_id=caller.user_id,
                status=status,
                offset=(page - 1) * limit,
                limit=limit,
            )

    async def search(self, caller: Caller, q: str, limit: int) -> list[tuple[Record, str | None]]:
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            return await repo.search_sessions(tx, caller.tenant, owner_id=caller.user_id, q=q, limit=limit)

    async def get(self, caller: Caller, session_id: str) -> SessionRecord:
        """The session, its messages, the tool calls that wait for a decision, and its plans."""
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            row = await repo.get_session(tx, caller.tenant, session_id, owner_id=caller.user_id)
            if row is None:
                raise SessionNotFoundError()
            return SessionRecord(
                session=row,
                messages=await repo.list_messages(tx, session_id),
                pending_executions=await repo.pending_executions(tx, session_id),
                plans=await repo.session_plans(tx, session_id, PLAN_STATUSES),
            )

    async def executions(self, caller: Caller, session_id: str) -> Sequence[Record]:
        """Every tool call of the session, with its decision, timing and outcome."""
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            if await repo.get_session(tx, caller.tenant, session_id, owner_id=caller.user_id) is None:
                raise SessionNotFoundError()
            return await repo.session_executions(tx, session_id)

    async def rename(self, caller: Caller, session_id: str, title: str) -> str:
        clean = " ".join(title.split())
        if not clean:
            raise ValidationFailedError("title must not be empty.")
        async with self.db.unit(caller.tenant) as tx:
            if await repo.get_session(tx, caller.tenant, session_id, owner_id=caller.user_id) is None:
                raise SessionNotFoundError()
            await repo.rename_session(tx, session_id, now=self.clock(), title=clean[:255])
        return clean[:255]
