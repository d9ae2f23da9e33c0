"""Review: flags on sessions, and what an admin token reads of its organizations.

Any writer may flag its own session for review; an admin token (`parley tokens create --admin`)
may flag any session of its organizations and is the only one that clears a flag. An admin
reads every session of its organizations (whoever owns it), a session's transcript (the read is
audited), the security events of the audit trail and a summary of the tool calls. Its scope
still bounds which organizations those are: an admin of organization A sees nothing of B, by the
same filters and row-level security as every other query.

Imports chat and store; never the web layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Unpack

from parley.chat import audit
from parley.chat.catalog import Caller
from parley.chat.clock import utc_now
from parley.errors import PermissionDeniedError, SessionNotFoundError, ValidationFailedError
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.repositories import AdminSessionQuery
from parley.store.sql import Record

SECURITY_WINDOW = timedelta(days=7)  # the security events shown when no `since` is given
TOOL_WINDOW = timedelta(days=1)  # the tool calls summarised when no `since` is given
MAX_WINDOW = timedelta(days=366)
HOURLY_UP_TO = timedelta(days=2)  # a longer window's time series is by day


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript:
    session: Record
    messages: Sequence[Record]
    executions: Sequence[Record]


@dataclass(slots=True)
class _Tally:
    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, count: int) -> None:
        self.total += count
        self.by_status[status] = self.by_status.get(status, 0) + count


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolReport:
    """Tool calls of a window: totals by status and by tool, a time series, the newest calls."""

    since: datetime
    until: datetime
    bucket: str  # hour | day
    total: int
    by_status: dict[str, int]
    by_tool: list[dict[str, Any]]
    series: list[dict[str, Any]]
    executions: Sequence[Record]


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise PermissionDeniedError("This needs an admin token (parley tokens create --admin).")


class ReviewDesk:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.clock = clock

    # -- flags ---------------------------------------------------------------------------------------

    async def flag(self, caller: Caller, session_id: str, reason: str | None) -> None:
        """Flag a session for review: the caller's own, or (admin) any of its organizations'."""
        clean = " ".join(reason.split())[:1000] or None if reason else None
        await self._set_flag(
            caller,
            session_id,
            audit.SESSION_FLAG,
            owner_id=None if caller.is_admin else caller.user_id,
            flagged=True,
            reason=clean,
            detail=lambda _row: {"reason": clean is not None, "byAdmin": caller.is_admin},
        )

    async def unflag(self, caller: Caller, session_id: str) -> None:
        """Clear a session's flag (admin only)."""
        require_admin(caller)
        await self._set_flag(
            caller,
            session_id,
            audit.SESSION_UNFLAG,
            owner_id=None,
            flagged=False,
            reason=None,
            detail=lambda row: {"wasFlagged": row["flagged_at"] is not None},
        )

    async def _set_flag(
        self,
        caller: Caller,
        session_id: str,
        action: str,
        *,
        owner_id: str | None,
        flagged: bool,
        reason: str | None,
        detail: Callable[[Record], dict[str, Any]],
    ) -> None:
        """Set or clear the flag of a session the caller sees (and `owner_id` owns, when given),
        and audit it as `action` with `detail(row)`, in one unit of work."""
        now = self.clock()
        async with self.db.unit(caller.tenant) as tx:
            row = await repo.get_session(tx, caller.tenant, session_id, owner_id=owner_id)
            if row is None:
                raise SessionNotFoundError()
            if flagged:
                await repo.set_flag(tx, session_id, now=now, user_id=caller.user_id, reason=reason)
            else:
                await repo.set_flag(tx, session_id, now=None, user_id=None, reason=None)
            await audit.record(
                tx,
                action,
                org_id=row["org_id"],
                user_id=caller.user_id,
                now=now,
                session_id=session_id,
                detail=detail(row),
            )

    # -- what an admin reads ---------------------------------------------------------------------------

    async def sessions(self, caller: Caller, **query: Unpack[AdminSessionQuery]) -> tuple[list[Record], int]:
        require_admin(caller)
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            return await repo.admin_list_sessions(tx, caller.tenant, **query)

    async def transcript(self, caller: Caller, session_id: str) -> Transcript:
        """A session of the admin's organizations, its messages and tool calls; the read is audited
        (in the same unit, so a read that fails records nothing)."""
        require_admin(caller)
        now = self.clock()
        async with self.db.unit(caller.tenant) as tx:
            row = await repo.get_session(tx, caller.tenant, session_id)
            if row is None:
                raise SessionNotFoundError()
            found = Transcript(
                session={**row, "user_email": await repo.user_email(tx, row["user_id"]) if row["user_id"] else None},
                messages=await repo.list_messages(tx, session_id),
                executions=await repo.session_executions(tx, session_id),
            )
            await audit.record(
                tx,
                audit.ADMIN_SESSION_READ,
                org_id=row["org_id"],
                user_id=caller.user_id,
                now=now,
                session_id=session_id,
            )
        return found

    async def security_events(
        self, caller: Caller, *, since: datetime | None, action: str | None, limit: int
    ) -> list[Record]:
        """Security events and tool calls of the audit trail (or one action's events), newest first."""
        require_admin(caller)
        start = since if since is not None else self.clock() - SECURITY_WINDOW
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            return await repo.security_events(tx, caller.tenant, since=start, action=action, limit=limit)

    async def tool_executions(
        self,
        caller: Caller,
        *,
        since: datetime | None,
        until: datetime | None,
        status: str | None,
        tool_name: str | None,
        limit: int,
    ) -> ToolReport:
        require_admin(caller)
        end = until if until is not None else self.clock()
        try:
            start = since if since is not None else end - TOOL_WINDOW
        except OverflowError:
            raise ValidationFailedError("until is too early.") from None
        if start >= end:
            raise ValidationFailedError("since must be before until.")
        if end - start > MAX_WINDOW:
            raise ValidationFailedError(f"The window may span at most {MAX_WINDOW.days} days.")
        bucket = "hour" if end - start <= HOURLY_UP_TO else "day"
        async with self.db.unit(caller.tenant, readonly=True) as tx:
            stats = await repo.execution_stats(
                tx,
                caller.tenant,
                since=start,
                until=end,
                status=status,
                tool_name=tool_name,
                bucket=bucket,
                limit=limit,
            )
        overall = _Tally()
        tools: dict[str, _Tally] = {}
        durations: dict[str, list[tuple[float, int]]] = {}
        for name, state, count, mean, timed in stats.by_tool:
            overall.add(state, count)
            tools.setdefault(name, _Tally()).add(state, count)
            if mean is not None:
                durations.setdefault(name, []).append((mean, timed))
        slots: dict[str, _Tally] = {}
        for slot, state, count in stats.series:
            slots.setdefault(slot, _Tally()).add(state, count)
        by_tool = [
            {
                "toolName": name,
                "total": tally.total,
                "byStatus": tally.by_status,
                "avgDurationMs": _weighted_mean(durations.get(name, [])),
            }
            for name, tally in sorted(tools.items(), key=lambda item: (-item[1].total, item[0]))
        ]
        series = [
            {"bucket": slot, "total": tally.total, "byStatus": tally.by_status} for slot, tally in sorted(slots.items())
        ]
        return ToolReport(
            since=start,
            until=end,
            bucket=bucket,
            total=overall.total,
            by_status=overall.by_status,
            by_tool=by_tool,
            series=series,
            executions=stats.recent,
        )


def _weighted_mean(means: list[tuple[float, int]]) -> float | None:
    weight = sum(count for _, count in means)
    if not weight:
        return None
    return round(sum(mean * count for mean, count in means) / weight, 1)
