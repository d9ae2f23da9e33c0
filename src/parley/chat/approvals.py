"""Decisions on tool calls and plans, and the session's pause: stored first, then acted on.

A decision is a conditional UPDATE of a pending, unexpired call (`repo.decide_execution`), in a
transaction that holds the session's row: decisions on one session queue there, so a call is
decided once however many requests race for it, and exactly one request settles the last call
of a round. That request takes the turn lease, under the reply's id, in the same commit, and
answers with the continuation's stream (`SessionManager.start_continuation`); the others answer
JSON. Nothing waits in memory: a decision works on any process, after any restart.

An approval is bound to the stored call: its tool's name and the hash of its arguments, as the
model wrote them and the round stored them. A client never supplies a call or a history.

Imports chat, tools and store; never the web layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from parley import metrics
from parley.billing.cost import TokenCounts
from parley.bus.memory import Subscription
from parley.chat import audit
from parley.chat.admission import approval_mode, approval_policy, limits_of
from parley.chat.events import ApprovalModeChanged
from parley.chat.history import build_history
from parley.chat.prompt import render_system_prompt
from parley.chat.tool_calls import (
    DENIED,
    EXPIRED,
    PLAN_APPROVED,
    PLAN_REJECTED,
    ApprovalMode,
    ApprovalPolicy,
    PlannedCall,
    arguments_hash,
)
from parley.chat.turns import Reply
from parley.errors import (
    AlreadyDecidedError,
    ExecutionNotFoundError,
    NotSupportedOnProviderError,
    PlanNotFoundError,
    SessionNotFoundError,
    TurnInProgressError,
)
from parley.providers.base import ChatMessage
from parley.store import repositories as repo
from parley.store.repositories import TurnSession
from parley.store.sql import Record, Tx
from parley.store.tenancy import Tenant
from parley.tools import CatalogTool

if TYPE_CHECKING:
    from parley.chat.sessions import SessionManager


@dataclass(frozen=True, slots=True)
class Decision:
    """A person's decision on one call; `always` also allows its tool for the rest of the chat."""

    execution_id: str
    approved: bool
    reason: str | None = None
    always: bool = False


@dataclass(frozen=True, slots=True)
class Decided:
    """What deciding did: the continuation's stream when it settled the round, else how many
    calls of the round still wait."""

    stream: Subscription | None
    pending: int


@dataclass(frozen=True, slots=True)
class SessionTool:
    tool: CatalogTool
    asks: bool  # a call would wait for the owner's decision (outside a running plan)
    always_allowed: bool  # the owner chose "always allow" for it in this chat


@dataclass(frozen=True, slots=True)
class _StoredApprovals:
    id: str
    approvals_paused: bool
    allowed_tools: list[str] | None


@dataclass(frozen=True, slots=True)
class PauseState:
    paused: bool
    effective_mode: ApprovalMode


@dataclass(frozen=True, slots=True)
class _Continuation:
    row: TurnSession
    now: datetime
    message_id: str
    stream: int
    prompt: list[ChatMessage]
    reply: Reply
    position: int
    metered: bool
    policy: ApprovalPolicy
    decided: list[PlannedCall]


class ApprovalDesk:
    """Decisions, plans and pause for the sessions of one SessionManager."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def _require_tools(self) -> None:
        if self.manager.tools is None:
            raise NotSupportedOnProviderError(
                "Plans and approval modes need tools, and no tool server is configured (PARLEY_MCP_CONFIG)."
            )

    # -- decisions on calls ----------------------------------------------------------------------------

    async def decide(self, tenant: Tenant, user_id: str, session_id: str, decisions: Sequence[Decision]) -> Decided:
        """Decide calls of the session, all or none (any refusal rolls the whole batch back)."""
        manager = self.manager
        async with manager.db.unit(tenant) as tx:
            row, now = await self.manager.lock_open_session(tx, tenant, user_id, session_id)
            allowed = list(row.allowed_tools or ())
            for decision in decisions:
                call = await self._decide_one(tx, row, decision, user_id=user_id, now=now)
                await audit.record(
                    tx,
                    audit.TOOL_APPROVAL_UPDATE,
                    org_id=row.org_id,
                    user_id=user_id,
                    now=now,
                    session_id=row.id,
                    detail={
                        "executionId": call["id"],
                        "toolName": call["tool_name"],
                        "approved": decision.approved,
                        "always": decision.always,
                    },
                )
                if decision.always and decision.approved and call["tool_name"] not in allowed:
                    allowed.append(call["tool_name"])
            metrics.tool_calls("denied", sum(1 for decision in decisions if not decision.approved))
            if allowed != list(row.allowed_tools or ()):
                await repo.set_approval_state(tx, session_id, now=now, allowed_tools=allowed)
            message_id = row.awaiting_approval
            if message_id is None:  # decided calls belong to a waiting reply: cannot happen
                raise ExecutionNotFoundError()
            calls = await repo.reply_executions(tx, message_id)
            last_round = max(call["round"] for call in calls)
            round_calls = [call for call in calls if call["round"] == last_round]
            waiting = [c for c in round_calls if c["status"] == "pending" and c["expires_at"] > now]
            if waiting:
                return Decided(stream=None, pending=len(waiting))
            # The last decision of the round: this request goes on with the reply.
            manager.claim_lease(message_id)
            try:
                going_on = await self._continue(tx, row, now, message_id, round_calls, allowed)
            except BaseException:
                manager.release_claim(message_id)
                raise
        try:
            stream = manager.start_continuation(
                going_on.row,
                going_on.now,
                message_id=message_id,
                stream=going_on.stream,
                prompt=going_on.prompt,
                reply=going_on.reply,
                position=going_on.position,
                metered=going_on.metered,
                policy=going_on.policy,
                decided=going_on.decided,
            )
        except BaseException:
            manager.release_claim(message_id)
            raise
        return Decided(stream=stream, pending=0)

    async def _decide_one(self, tx: Tx, row: TurnSession, decision: Decision, *, user_id: str, now: datetime) -> Record:
        decided = await repo.decide_execution(
            tx,
            row.id,
            decision.execution_id,
            approved=decision.approved,
            user_id=user_id,
            reason=decision.reason,
            now=now,
        )
        call = await repo.get_execution(tx, row.id, decision.execution_id)
        if call is None:
            raise ExecutionNotFoundError()
        if not decided:
            status = call["status"]
            raise AlreadyDecidedError("expired" if status == "pending" else status)
        plan = await repo.plan_of_execution(tx, call["id"])
        if plan is not None:
            await repo.update_plan(
                tx,
                plan["id"],
                {"status": "approved" if decision.approved else "rejected", "decided_by": user_id, "decided_at": now},
                only_if=["pending"],
            )
        return call

    async def _continue(
        self,
        tx: Tx,
        row: TurnSession,
        now: datetime,
        message_id: str,
        round_calls: list[Record],
        allowed: list[str],
    ) -> _Continuation:
        """Take the lease for the reply and gather what its continuation needs."""
        manager = self.manager
        stream = await repo.take_continuation(
            tx, row.id, token=message_id, owner=manager.owner, now=now, expires_at=now + manager.policy.lease_ttl
        )
        if stream is None:
            raise TurnInProgressError()
        await repo.reopen_reply(tx, message_id)
        stored = await repo.get_message(tx, message_id)
        if stored is None:
            raise ExecutionNotFoundError()
        parts = list(stored["content_parts"] or [])
        decided = await self._decided_calls(tx, round_calls, parts, now)
        history = await repo.history_rows(tx, row.id)
        reply = Reply(
            tool_rounds=max(call["round"] for call in round_calls),
            settled=TokenCounts(
                input_tokens=stored["input_tokens"] or 0,
                output_tokens=stored["output_tokens"] or 0,
                cache_read_tokens=stored["cache_read_tokens"] or 0,
                cache_write_tokens=stored["cache_write_tokens"] or 0,
                estimated=bool(stored["usage_estimated"]),
            ),
            settled_cents=stored["cost_cents"] or Decimal(0),
        )
        for part in parts:
            reply.add_part(part)
        budget = await repo.budget_limits(tx, row.org_id)
        row = dataclasses.replace(row, allowed_tools=allowed)
        prompt = [
            ChatMessage.text("system", render_system_prompt(row.system_prompt or "", row.context_snapshot)),
            *build_history(history[:-1]),  # every message before the reply (it is the last one)
        ]
        return _Continuation(
            row=row,
            now=now,
            message_id=message_id,
            stream=stream,
            prompt=prompt,
            reply=reply,
            position=stored["position"],
            metered=limits_of(budget).spends_are_limited,
            policy=await approval_policy(tx, row, approval_mode(budget)),
            decided=decided,
        )

    async def _decided_calls(
        self, tx: Tx, round_calls: list[Record], parts: list[dict[str, Any]], now: datetime
    ) -> list[PlannedCall]:
        """The calls of the round that wait for a result, as the continuation takes them up:
        approved ones run (if still bound to what was stored and their tool is still there); the
        others are answered (denied, expired, a plan decided)."""
        catalog = self.manager.tools
        stored_calls = {p.get("toolUseId"): p for p in parts if isinstance(p, dict) and p.get("type") == "tool_call"}
        answered = {p.get("toolUseId") for p in parts if isinstance(p, dict) and p.get("type") == "tool_result"}
        decided: list[PlannedCall] = []
        for call in round_calls:
            if call["tool_use_id"] in answered or call["status"] not in ("approved", "denied", "pending"):
                continue
            entry = PlannedCall(
                execution_id=call["id"],
                index=call["call_index"],
                call_id=call["tool_use_id"],
                name=call["tool_name"],
                arguments=call["input"] or {},
                disposition="refused",
            )
            decided.append(entry)
            plan = await repo.plan_of_execution(tx, call["id"])
            status = call["status"]
            if status == "pending":  # its time ran out before this decision settled the round
                await repo.update_execution(tx, call["id"], {"status": "expired", "completed_at": now})
                if plan is not None:
                    await repo.update_plan(tx, plan["id"], {"status": "expired"}, only_if=["pending"])
                entry.refusal = EXPIRED
            elif plan is not None:
                approved = status == "approved"
                entry.refusal, entry.answer_is_error = (PLAN_APPROVED if approved else PLAN_REJECTED), False
                if approved:
                    await repo.update_execution(
                        tx, call["id"], {"status": "completed", "output": PLAN_APPROVED, "completed_at": now}
                    )
            elif status == "denied":
                reason = call["decision_reason"]
                entry.refusal = DENIED + (f" Their reason: {reason}" if reason else "")
            else:
                stored = stored_calls.get(call["tool_use_id"])
                tool = catalog.get(call["tool_name"]) if catalog is not None else None
                if (
                    stored is None
                    or stored.get("toolName") != call["tool_name"]
                    or arguments_hash(stored.get("input") or {}) != call["input_hash"]
                    or arguments_hash(entry.arguments) != call["input_hash"]
                ):
                    entry.refusal = "This call does not match what was approved; it was not run."
                elif tool is None or tool.blocked:
                    why = tool.blocked if tool is not None and tool.blocked else "its tool is no longer available"
                    entry.refusal = f"Approved, but not run: {why}."
                else:
                    entry.disposition, entry.tool = "run", tool
                    if entry.plan_step is None and call["plan_id"] is not None:
                        entry.plan_id, entry.plan_step = call["plan_id"], call["plan_step"]
                    continue
                await repo.update_execution(
                    tx,
                    call["id"],
                    {"status": "failed", "is_error": True, "error_message": entry.refusal, "completed_at": now},
                )
        return decided

    # -- what a session may use ----------------------------------------------------------------------

    async def session_tools(self, tenant: Tenant, user_id: str, session_id: str) -> list[SessionTool]:
        """The tools the session's model may call now, and whether a call of each would ask."""
        async with self.manager.db.unit(tenant, readonly=True) as tx:
            found = await repo.get_session(tx, tenant, session_id, owner_id=user_id)
            if found is None:
                raise SessionNotFoundError()
            state = _StoredApprovals(found["id"], found["approvals_paused"], found["allowed_tools"])
            mode = approval_mode(await repo.get_budget(tx, found["org_id"]))
            policy = await approval_policy(tx, state, mode)
        catalog = self.manager.tools
        if catalog is None:
            return []
        return [
            SessionTool(tool=tool, asks=policy.asks(tool), always_allowed=tool.name in policy.allowed)
            for tool in catalog.tools()
            if tool.blocked is None
        ]

    async def org_tools(self, tenant: Tenant, org_id: str) -> list[SessionTool]:
        """The tools a new session of the organization may use, and which of them ask."""
        async with self.manager.db.unit(tenant, readonly=True) as tx:
            mode = approval_mode(await repo.get_budget(tx, org_id))
        policy = ApprovalPolicy(mode=mode)
        catalog = self.manager.tools
        if catalog is None:
            return []
        return [
            SessionTool(tool=t, asks=policy.asks(t), always_allowed=False) for t in catalog.tools() if t.blocked is None
        ]

    # -- plans -----------------------------------------------------------------------------------------

    async def _plan(self, tenant: Tenant, user_id: str, session_id: str, statuses: Sequence[str]) -> Record:
        async with self.manager.db.unit(tenant, readonly=True) as tx:
            row = await repo.get_session(tx, tenant, session_id, owner_id=user_id)
            if row is None:
                raise SessionNotFoundError()
            self._require_tools()
            found = await repo.session_plans(tx, session_id, statuses)
        if not found:
            raise PlanNotFoundError()
        return found[0]

    async def decide_plan(self, tenant: Tenant, user_id: str, session_id: str, *, approved: bool) -> Decided:
        """Approve or reject the plan waiting for approval: a decision on the call that proposed it."""
        plan = await self._plan(tenant, user_id, session_id, ["pending"])
        return await self.decide(tenant, user_id, session_id, [Decision(plan["execution_id"], approved)])

    async def abort_plan(self, tenant: Tenant, user_id: str, session_id: str) -> Decided | None:
        """Abort the session's plan: a waiting one is rejected; a running one stops (its remaining
        steps will ask like any call). None when a running plan was aborted."""
        plan = await self._plan(tenant, user_id, session_id, ["pending", "approved"])
        if plan["status"] == "pending":
            return await self.decide(tenant, user_id, session_id, [Decision(plan["execution_id"], False)])
        async with self.manager.db.unit(tenant) as tx:
            aborted = await repo.update_plan(
                tx, plan["id"], {"status": "aborted", "completed_at": self.manager.clock()}, only_if=["approved"]
            )
        if not aborted:
            raise PlanNotFoundError()
        self.manager.plan_aborted(session_id, plan["id"])
        return None

    async def pause(self, tenant: Tenant, user_id: str, session_id: str, *, paused: bool) -> PauseState:
        """Pause (every call that requires approval asks, and a running plan is aborted) or resume
        the organization's approval mode for this session."""
        manager = self.manager
        aborted: list[str] = []
        async with manager.db.unit(tenant) as tx:
            row, now = await self.manager.lock_open_session(tx, tenant, user_id, session_id)
            self._require_tools()
            await repo.set_approval_state(tx, session_id, now=now, paused=paused)
            if paused:
                for plan in await repo.session_plans(tx, session_id, ["approved"]):
                    if await repo.update_plan(
                        tx, plan["id"], {"status": "aborted", "completed_at": now}, only_if=["approved"]
                    ):
                        aborted.append(plan["id"])
            mode = approval_mode(await repo.budget_limits(tx, row.org_id))
            policy = await approval_policy(tx, dataclasses.replace(row, approvals_paused=paused), mode)
        for plan_id in aborted:
            manager.plan_aborted(session_id, plan_id)
        manager.policy_changed(session_id, policy, ApprovalModeChanged(mode=policy.effective_mode))
        return PauseState(paused=paused, effective_mode=policy.effective_mode)
