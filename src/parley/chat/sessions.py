"""SessionManager: admission, live sessions, turns, Stop, close and re-attach, on any process.

The database is the truth of a turn: who runs it (the lease, with its owner), the number of its
event stream, its Stop flag, the session's status and the reply checkpointed while it streams
(`upkeep.py`). Memory holds only a cache of live sessions (their event channel and the turn this
process runs); past `max_live_sessions` idle entries are dropped and rehydrate on their next
message. With Redis (`bus/redis.py`) another process can follow a turn and wake the process that
runs it; without it, Stop and close still reach the turn through the database.

A turn's lease token is the id its reply is stored under: a process that recovers the lease of a
dead one knows which reply to end, and a turn that finishes after losing its lease writes over
that same reply, never beside it.

Imports chat, providers, billing, bus and store; never the web layer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from parley import metrics
from parley.billing.budget import Allowance
from parley.billing.cost import Prices
from parley.bus.memory import SessionChannel, Subscription, parse_event_id
from parley.bus.redis import RedisRelay
from parley.chat import audit
from parley.chat.admission import Admission, admit, limits_of, reserve
from parley.chat.clock import utc_now
from parley.chat.context import (
    DEFAULT_TOKENS_PER_CHAR,
    MARGIN,
    MIN_TOKENS_PER_CHAR,
    Fitted,
    Plan,
    Strategy,
    conversation_of,
    fit,
)
from parley.chat.events import (
    Done,
    MessageStart,
    PlanComplete,
    StreamEvent,
    StreamGap,
    TitleUpdated,
    TurnError,
    encode,
    is_done_frame,
)
from parley.chat.ownership import ProcessName
from parley.chat.prompt import require_text, sanitize_content
from parley.chat.tool_calls import ApprovalPolicy, PlannedCall
from parley.chat.turns import (
    AWAITING_APPROVAL,
    CallUpdate,
    Reply,
    TurnContext,
    TurnOutcome,
    TurnRecord,
    TurnSpec,
    TurnTools,
    start_turn,
)
from parley.context import bind_turn
from parley.errors import (
    BudgetExhaustedError,
    NoTurnRunningError,
    ParleyError,
    PayloadTooLargeError,
    ProviderError,
    RateLimitedError,
    ResumeUnavailableError,
    SessionClosedError,
    SessionExpiredError,
    SessionNotFoundError,
    TurnInProgressError,
    TurnLostError,
    ValidationFailedError,
)
from parley.providers.base import ChatMessage, ContextWindow, ForcedTool, Provider, ToolChoice
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.ids import new_id
from parley.store.repositories import HeldLease, TurnSession, TurnTotals
from parley.store.sql import Record, Tx
from parley.store.stored_turn import store_turn
from parley.store.tenancy import Tenant
from parley.tools import ToolCatalog

log = logging.getLogger("parley.sessions")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPolicy:
    """Limits and timings, from Settings (see parley.config)."""

    model: str
    max_tokens: int | None
    max_content_chars: int = 10_000
    turn_timeout: float = 360.0
    idle_ttl: timedelta = timedelta(hours=2)
    max_age: timedelta = timedelta(hours=24)
    max_live_sessions: int = 200
    lease_ttl: timedelta = timedelta(seconds=20)
    prices: Callable[[str], Prices] = field(default=lambda _model: Prices())  # by model id
    max_tool_rounds: int = 8
    approval_ttl: timedelta = timedelta(minutes=10)
    max_reply_chars: int = 200_000
    context_strategy: Strategy = "trim"
    context_block: int = 1  # exchanges dropped together (a provider's cached prefix stays put)


@dataclass(slots=True, eq=False)
class RunningTurn:
    """A turn this process runs (or a continuation of one, after its tool calls were decided)."""

    lease_token: str  # also the id its reply is stored under
    stream: int  # its event stream's number
    started: float  # on the loop's clock
    position: int  # the reply's place in the session
    reply: Reply = field(default_factory=Reply)
    task: asyncio.Task[None] | None = None
    stream_task: asyncio.Task[TurnOutcome] | None = None  # the phase running now (Stop cancels it)
    stop_reason: str | None = None
    metered: bool = False  # the organization's spend is limited: bill at most what was reserved
    reservation_id: str | None = None  # the current model round's
    reserved_cents: Decimal = Decimal(0)
    unbilled_cents: Decimal = Decimal(0)  # cost past reservations, never billed (see `_persist`)
    tools: TurnTools | None = None
    checkpointed_chars: int = 0  # how much of the reply the database has
    checkpointed_at: float = 0.0  # on the loop's clock
    renewed: float = 0.0  # when the lease was last renewed, on the loop's clock
    begun: float = field(default_factory=time.monotonic)  # when its message (or decision) arrived
    continuation: bool = False  # goes on after tool decisions: its first output is not a first token


@dataclass(slots=True, eq=False)
class LiveSession:
    id: str
    org_id: str
    user_id: str | None
    last_activity: datetime
    channel: SessionChannel
    turn: RunningTurn | None = None
    tokens_per_char: float | None = None  # as the model server counted this session's prompts


class SessionManager:
    """Owns the live sessions and running turns of this process."""

    def __init__(
        self,
        *,
        db: Database,
        provider: Provider,
        policy: SessionPolicy,
        clock: Callable[[], datetime] = utc_now,
        process: ProcessName | None = None,
        relay: RedisRelay | None = None,
        tools: ToolCatalog | None = None,
    ) -> None:
        self.db = db
        self.provider = provider
        self.tools = tools if tools is not None and tools.configured else None
        self.window: ContextWindow | None = None  # the model's context window (app.py resolves it)
        # A new session's tokens per character: the model's tokenizer's (app.py asks it), else a guess.
        self.tokens_per_char = DEFAULT_TOKENS_PER_CHAR
        self.policy = policy
        self.clock = clock
        self.process = process or ProcessName.current()
        self.owner = str(self.process)
        self.relay = relay
        self.live: OrderedDict[str, LiveSession] = OrderedDict()
        self._turn_tasks: set[asyncio.Task[None]] = set()
        # The leases this process holds or is taking: from just before an admission commits until
        # its turn ends (`live` only knows a turn once its admission has committed).
        self._own_leases: set[str] = set()

    # -- admission ---------------------------------------------------------------------------------

    def check_content(self, content: str) -> str:
        text = require_text("content", sanitize_content(content))
        if not text:
            raise ValidationFailedError("content must not be empty.")
        if len(text) > self.policy.max_content_chars:
            raise PayloadTooLargeError(
                f"content is {len(text)} characters; the limit is {self.policy.max_content_chars}."
            )
        return text

    def _expiry(self, row: TurnSession, now: datetime) -> str | None:
        if now - row.created_at > self.policy.max_age:
            return "Session expired (24h limit). Start a new session."
        if now - row.last_activity_at > self.policy.idle_ttl:
            return "Session expired due to inactivity. Start a new session."
        return None

    def is_orphaned(self, lease: HeldLease | TurnSession, now: datetime) -> bool:
        """Whether a held lease belongs to a turn nobody runs any more, as this process can tell on
        its own: expired, or held by a process of this host that is gone (never one of this
        process's own turns). `owner_gone` asks Redis about the others."""
        if lease.lease_owner == self.owner:
            return lease.lease_token not in self._own_leases
        if lease.lease_expires_at is not None and lease.lease_expires_at < now:
            return True
        holder = ProcessName.parse(lease.lease_owner)
        return holder is not None and self.process.outlived(holder)

    async def owner_gone(self, owner: str | None) -> bool:
        """Whether the process of another machine that holds a lease stopped announcing itself in
        Redis (it died); False when there is no Redis to ask."""
        if owner is None or owner == self.owner or self.relay is None or not self.relay.available:
            return False
        return not await self.relay.alive(owner)

    async def send_message(
        self,
        tenant: Tenant,
        user_id: str,
        session_id: str,
        content: str,
        page_context: dict[str, Any] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Subscription:
        """Admit a message and start its turn; the returned subscription sees every event of it.

        A `page_context` replaces the session's context snapshot from this turn on; `tool_choice`
        applies to the turn's first model round.
        """
        begun = time.monotonic()
        text = self.check_content(content)
        if isinstance(tool_choice, ForcedTool):
            tool = self.tools.get(tool_choice.name) if self.tools is not None else None
            if tool is None or tool.blocked:
                raise ValidationFailedError(
                    f"toolChoice names {tool_choice.name!r}, which is not a tool this session can use."
                )
        live_now = self.live.get(session_id)
        if live_now is not None and live_now.turn is not None:
            # Running here: refuse before touching the database (the lease says the same).
            await self._check_visible(tenant, user_id, session_id)
            raise TurnInProgressError()
        lease = new_id()
        self._own_leases.add(lease)
        try:
            try:
                admitted = await self._admit(tenant, user_id, session_id, text, page_context, lease)
            except TurnInProgressError as busy:
                # Held by a process of another machine: if Redis says it is gone, end its turn
                # and admit (outside the unit of work: a SQLite unit must never wait on the network).
                held = busy.lease
                if not isinstance(held, HeldLease) or not await self.owner_gone(held.lease_owner):
                    raise
                if not await self.end_orphan(held):
                    raise
                admitted = await self._admit(tenant, user_id, session_id, text, page_context, lease)
            admission, row, now, orphan, expired = admitted
        except BaseException:
            self._own_leases.discard(lease)
            raise
        if orphan is not None:
            self._announce_recovery(orphan)
        if admission is None:
            self._own_leases.discard(lease)
            await self._drop(session_id, reason="idle")
            raise SessionExpiredError(expired)
        return self._start(row, now, text, lease, admission, tool_choice, begun)

    async def _admit(
        self,
        tenant: Tenant,
        user_id: str,
        session_id: str,
        text: str,
        page_context: dict[str, Any] | None,
        lease: str,
    ) -> tuple[Admission | None, TurnSession, datetime, HeldLease | None, str | None]:
        """The admission's unit of work: (admission or None when the session just expired, the
        session as read, the time of the admission, a turn it found orphaned and ended, why expired)."""
        expired: str | None = None
        admission: Admission | None = None
        orphan: HeldLease | None = None
        row: TurnSession | None = None
        try:
            async with self.db.unit(tenant, admission=True) as tx:
                # As lock_open_session, and the organization's budget row locked with it.
                found, budget = await repo.session_and_budget_for_turn(tx, session_id)
                now = self.clock()
                row = _open_session(found, tenant, user_id)
                if row.lease_token is not None:
                    held = await repo.held_lease(tx, row.id)
                    if held is None or not self.is_orphaned(held, now):
                        raise TurnInProgressError(lease=held)
                    orphan = held if await repo.end_orphaned_turn(tx, held, now=now) else None
                expired = self._expiry(row, now)
                if expired:
                    await repo.set_status(tx, session_id, "expired", now=now, only_if="active")
                else:
                    admission = await admit(
                        tx,
                        row,
                        budget,
                        text=text,
                        lease=lease,
                        owner=self.owner,
                        lease_ttl=self.policy.lease_ttl,
                        # A reservation outlives any turn: the turn timeout plus the lease's grace.
                        reservation_ttl=timedelta(seconds=self.policy.turn_timeout) + 2 * self.policy.lease_ttl,
                        now=now,
                        max_tokens=self.policy.max_tokens,
                        prices=self.policy.prices(row.model),
                        page_context=page_context,
                        context=self._context_plan(session_id),
                        audit=audit.event(
                            audit.MESSAGE_SEND,
                            org_id=row.org_id,
                            user_id=user_id,
                            now=now,
                            session_id=session_id,
                            detail={"turn": lease},
                        ),
                    )
        except (RateLimitedError, BudgetExhaustedError) as refused:
            if row is not None:  # recorded once the refused unit has rolled back
                await self._record_refusal(refused, row.org_id, user_id, session_id)
            raise
        assert row is not None
        return admission, row, now, orphan, expired

    async def lock_open_session(
        self, tx: Tx, tenant: Tenant, user_id: str, session_id: str
    ) -> tuple[TurnSession, datetime]:
        """The session's row, locked (what changes a session's turn queues here), and the time
        after the lock (a message's place in the queue); 404 unless the caller owns it, 409/410
        when it is closed or expired."""
        row = await repo.session_for_turn(tx, session_id)
        return _open_session(row, tenant, user_id), self.clock()

    def _context_plan(self, session_id: str, *, tighter: float = 1.0) -> Plan:
        """How the session's history is fitted to the window (see chat/context.py)."""
        live = self.live.get(session_id)
        ratio = live.tokens_per_char if live is not None and live.tokens_per_char else self.tokens_per_char
        tools_chars = self.tools.specs_chars() if self.tools is not None else 0
        return Plan(
            window=self.window.tokens if self.window is not None else None,
            tokens_per_char=ratio * tighter,
            strategy=self.policy.context_strategy,
            block=self.policy.context_block,
            tools_chars=tools_chars,
        )

    async def _record_refusal(self, refused: Exception, org_id: str, user_id: str | None, session_id: str) -> None:
        """A rate limit or a budget refused a message or a turn's next round (its own unit)."""
        action = audit.RATE_LIMITED if isinstance(refused, RateLimitedError) else audit.BUDGET_REFUSED
        code = refused.error_code() if isinstance(refused, RateLimitedError | BudgetExhaustedError) else None
        now = self.clock()
        detail = {"code": code}
        await audit.record_refusal(
            self.db, action, org_id=org_id, user_id=user_id, now=now, session_id=session_id, detail=detail
        )

    def _start(
        self,
        row: TurnSession,
        now: datetime,
        text: str,
        lease: str,
        admission: Admission,
        tool_choice: ToolChoice,
        begun: float,
    ) -> Subscription:
        """Start an admitted turn: its live session, its stream, its task."""
        turn = RunningTurn(
            begun=begun,
            lease_token=lease,
            stream=admission.stream,
            started=asyncio.get_running_loop().time(),
            position=admission.user_position + 1,
            metered=admission.metered,
            reservation_id=admission.reservation_id,
            reserved_cents=admission.reserved_cents,
        )
        prompt = [
            ChatMessage.text("system", admission.system_prompt),
            *admission.history,
            ChatMessage.text("user", text),
        ]
        return self._launch(
            row.id,
            row.org_id,
            row.user_id,
            row.model,
            now,
            turn,
            prompt=prompt,
            max_tokens=admission.max_tokens,
            policy=admission.policy,
            tool_choice=tool_choice,
            title=admission.title,
            context=self._turn_context(row.id, admission),
        )

    def _turn_context(self, session_id: str, admission: Admission) -> TurnContext:
        """What the turn needs to know of its history's fit."""
        fitted = admission.fitted
        return TurnContext(
            system_prompt=admission.base_system_prompt,
            dropped=fitted.dropped_rows,
            summary=fitted.summary,
            to_summarize=fitted.to_summarize,
            refit=partial(self._refit, session_id, admission),
            calibrate=partial(self._calibrate, session_id),
        )

    def _calibrate(self, session_id: str, tokens_per_char: float) -> None:
        live = self.live.get(session_id)
        if live is not None:
            live.tokens_per_char = min(max(tokens_per_char * MARGIN, MIN_TOKENS_PER_CHAR), 2.0)

    def _refit(self, session_id: str, admission: Admission, stated: int | None) -> Fitted | None:
        """Fit the history tighter after the server said the prompt is too long: to the window it
        stated (kept from now on), with a ratio a half higher. None when nothing more can go."""
        if stated is not None and (self.window is None or stated < self.window.tokens):
            log.warning("the model server says its context window is %d tokens; fitting histories to it", stated)
            self.window = ContextWindow(tokens=stated, source="the model server's overflow error")
        window = self.window.tokens if self.window is not None else None
        if window is None:
            return None
        plan = dataclasses.replace(self._context_plan(session_id, tighter=1.5), strategy="trim")
        try:
            fitted = fit(
                conversation_of(admission.rows),
                plan,
                fixed_chars=admission.fixed_chars,
                max_tokens=admission.max_tokens,
            )
        except ParleyError:
            return None
        if fitted.dropped_rows <= admission.fitted.dropped_rows and len(fitted.history) >= len(admission.history):
            return None
        return fitted

    def start_continuation(
        self,
        session: TurnSession,
        now: datetime,
        *,
        message_id: str,
        stream: int,
        prompt: list[ChatMessage],
        reply: Reply,
        position: int,
        metered: bool,
        policy: ApprovalPolicy,
        decided: list[PlannedCall],
    ) -> Subscription:
        """Go on with a reply whose tool calls were all decided (see `approvals.py`); its lease was
        taken, under the reply's id, in the decision's transaction."""
        turn = RunningTurn(
            lease_token=message_id,
            stream=stream,
            started=asyncio.get_running_loop().time(),
            position=position,
            reply=reply,
            metered=metered,
            checkpointed_chars=reply.size(),
            continuation=True,
        )
        return self._launch(
            session.id,
            session.org_id,
            session.user_id,
            session.model,
            now,
            turn,
            prompt=prompt,
            max_tokens=self.policy.max_tokens,
            policy=policy,
            resume=decided,
        )

    def _launch(
        self,
        session_id: str,
        org_id: str,
        user_id: str | None,
        model: str,
        now: datetime,
        turn: RunningTurn,
        *,
        prompt: list[ChatMessage],
        max_tokens: int | None,
        policy: ApprovalPolicy,
        tool_choice: ToolChoice = "auto",
        resume: list[PlannedCall] | None = None,
        title: str | None = None,
        context: TurnContext | None = None,
    ) -> Subscription:
        """Run a turn (or a continuation) whose lease this process holds: its live session, its
        stream, its task. The subscription is made before anything is published."""
        lease = turn.lease_token
        turn.renewed = turn.checkpointed_at = turn.started
        live = self._live_session(session_id, org_id, user_id, now)
        try:
            frames = live.channel.begin_turn(turn.stream)
            if self.relay is not None:
                self.relay.track(session_id, turn.stream, frames)
            subscription = live.channel.subscribe()  # before anything is published
            live.turn = turn
            if title is not None:
                self._publish(live, TitleUpdated(title=title))
            if self.tools is not None:
                turn.tools = TurnTools(
                    catalog=self.tools,
                    policy=policy,
                    store_call=partial(self._store_call, org_id, session_id, user_id, turn),
                    reserve=partial(self._reserve, org_id, session_id, user_id, model, turn),
                    new_id=new_id,
                    choice=tool_choice,
                    max_rounds=self.policy.max_tool_rounds,
                    approval_ttl=self.policy.approval_ttl,
                    resume=resume,
                )
            spec = TurnSpec(
                session_id=session_id,
                message_id=lease,
                prompt=prompt,
                model=model,
                max_tokens=max_tokens,
                output_limit=max_tokens if turn.metered and max_tokens is not None else None,
                turn_timeout=self.policy.turn_timeout,
                provider=self.provider,
                prices=self.policy.prices(model),
                publish=partial(self._publish, live),
                persist=partial(self._persist, live, org_id, session_id, turn),
                clock=self.clock,
                stop_reason=lambda: turn.stop_reason,
                on_stream_task=partial(_set_stream_task, turn),
                reply=turn.reply,
                tools=turn.tools,
                max_reply_chars=self.policy.max_reply_chars,
                context=context,
                count_turn=resume is None,
                observe=partial(self._turn_ended, turn),
            )
            # Queued before the response starts, so its first write carries it.
            self._publish(live, MessageStart(message_id=lease))
            bind_turn(org_id, session_id, lease)  # the turn's tasks (and their log lines) carry it
            turn.task = start_turn(spec)
        except BaseException:
            live.turn = None
            self._own_leases.discard(lease)
            asyncio.get_running_loop().create_task(self._release(org_id, session_id, lease, turn.reservation_id))
            raise
        self._turn_tasks.add(turn.task)
        turn.task.add_done_callback(partial(self._turn_done, lease))
        return subscription

    def _turn_ended(self, turn: RunningTurn, outcome: TurnOutcome) -> None:
        """Count a turn that ended (stored): its outcome, duration, first token, upstream error."""
        now = time.monotonic()
        if outcome.finish_reason == AWAITING_APPROVAL:
            label = "awaiting_approval"
        elif outcome.completed:
            label = "completed"
        elif outcome.finish_reason == "interrupted":
            label = "interrupted"
        else:
            label = "error"
        first = turn.reply.first_token_at
        error = outcome.error
        metrics.turn_ended(
            label,
            duration=now - turn.begun,
            first_token=first - turn.begun if first and not turn.continuation else None,
            upstream_error=error.error_code() if isinstance(error, ProviderError) else None,
        )

    def _turn_done(self, lease: str, task: asyncio.Task[None]) -> None:
        self._own_leases.discard(lease)
        self._turn_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("turn task failed", exc_info=task.exception())

    def _publish(self, live: LiveSession, event: StreamEvent) -> None:
        channel = live.channel
        if channel.closed:
            return
        final = type(event) is Done
        if final:
            live.turn = None
        channel.publish(event, encode, final=final)
        if self.relay is not None:
            self.relay.dirty(live.id, channel.turn, final=final)

    async def _persist(
        self, live: LiveSession, org_id: str, session_id: str, turn: RunningTurn, record: TurnRecord
    ) -> None:
        """One transaction: the reply, session totals, cost rows, the round's reservation settled,
        the calls and plans first stored with it, and the lease released when the turn ends or
        waits for decisions. On PostgreSQL a round without calls or plans is one statement
        (`parley_store_turn`), so the organization's cost rows are not locked across a round trip."""
        now = record.now
        cost = record.cost_cents
        if turn.metered and cost > turn.reserved_cents:
            # Only a server that ignores max_tokens and packs several tokens per chunk gets
            # here: the organization is never billed past what it reserved.
            log.warning(
                "session %s: turn cost %s cents exceeds its reservation %s; billing the reservation",
                session_id,
                cost,
                turn.reserved_cents,
            )
            turn.unbilled_cents += cost - turn.reserved_cents
            cost = turn.reserved_cents
        tokens = record.tokens
        totals = TurnTotals(
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            cache_read_tokens=tokens.cache_read_tokens,
            cache_write_tokens=tokens.cache_write_tokens,
            cost_cents=cost,
        )
        ends = record.finish_reason is not None
        final = ends and not record.awaiting  # the reply is over: it counts as a message
        adds_cost = not tokens.is_zero or bool(final and record.text)
        plain = not (record.executions or record.starting or record.plans or record.awaiting)
        if plain and self.db.is_postgres:
            # The same writes in one statement, its own transaction (store/stored_turn.py).
            whole = record.message_tokens
            await store_turn(
                self.db,
                org_id,
                session_id=session_id,
                lease_token=turn.lease_token,
                reservation_id=turn.reservation_id,
                release=ends,
                count_turn=record.count_turn,
                now=now,
                totals=totals,
                position=turn.position,
                content=record.text,
                parts=record.parts,
                reply_tokens=(
                    whole.input_tokens,
                    whole.output_tokens,
                    whole.cache_read_tokens,
                    whole.cache_write_tokens,
                ),
                reply_cost_cents=record.message_cents - turn.unbilled_cents,
                usage_estimated=whole.estimated,
                finish_reason=record.finish_reason,
                cost_messages=(1 if final else 0) if adds_cost else None,
            )
        else:
            await self._persist_in_unit(org_id, session_id, live, turn, record, totals, ends, final, adds_cost)
        metrics.usage(
            tokens.input_tokens, tokens.output_tokens, tokens.cache_read_tokens, tokens.cache_write_tokens, cost
        )
        for row in record.executions:
            if row["status"] == "refused":
                metrics.tool_calls("refused")
        turn.reservation_id, turn.reserved_cents = None, Decimal(0)
        turn.checkpointed_chars = turn.reply.size()
        live.last_activity = now

    async def _persist_in_unit(
        self,
        org_id: str,
        session_id: str,
        live: LiveSession,
        turn: RunningTurn,
        record: TurnRecord,
        totals: TurnTotals,
        ends: bool,
        final: bool,
        adds_cost: bool,
    ) -> None:
        """`_persist` as a transaction of statements (SQLite, and turns with calls or plans)."""
        now = record.now
        async with self.db.unit(Tenant.for_org(org_id)) as tx:
            if turn.reservation_id is not None:
                await repo.delete_reservation(tx, turn.reservation_id)
            # The session row first: writing the reply takes a share lock on it (its foreign key),
            # and upgrading that lock while an admission waits for the row would deadlock.
            await repo.record_turn(
                tx,
                session_id,
                totals=totals,
                count_turn=record.count_turn,
                now=now,
                lease_token=turn.lease_token,
                release=ends,
            )
            await write_reply(tx, session_id, turn, record.now, record=record)
            if adds_cost:
                await repo.add_cost_usage(tx, org_id, totals=totals, now=now, messages=1 if final else 0)
            await repo.insert_executions(tx, org_id, session_id, record.executions)
            if record.executions:
                await repo.insert_audit_events(
                    tx, [_tool_event(row, org_id, live.user_id, session_id, now) for row in record.executions]
                )
            await repo.start_executions(tx, record.starting, now=now)
            await repo.insert_plans(tx, org_id, session_id, record.plans)
            if record.awaiting:
                await repo.set_awaiting(tx, session_id, record.message_id)

    async def _store_call(
        self, org_id: str, session_id: str, user_id: str | None, turn: RunningTurn, update: CallUpdate
    ) -> None:
        """A call's row changes, with the reply as it stands (never over a finished reply); a call
        that settled is audited with it."""
        now = self.clock()
        status = update.changes.get("status")
        async with self.db.unit(Tenant.for_org(org_id)) as tx:
            await repo.update_execution(tx, update.execution_id, update.changes)
            if status is not None:
                detail = {"executionId": update.execution_id, "status": status}
                if update.changes.get("duration_ms") is not None:
                    detail["durationMs"] = update.changes["duration_ms"]
                await audit.record(
                    tx,
                    audit.tool_action(update.tool_name),
                    org_id=org_id,
                    user_id=user_id,
                    now=now,
                    session_id=session_id,
                    detail=detail,
                )
            if update.plan_id is not None and update.plan_step is not None:
                changes: dict[str, Any] = {"current_step": update.plan_step}
                if update.plan_done:
                    changes |= {"status": "completed", "completed_at": now}
                await repo.update_plan(tx, update.plan_id, changes, only_if=["approved"])
            await write_reply(tx, session_id, turn, now)
        if status is not None:
            metrics.tool_calls(status)

    async def _reserve(
        self,
        org_id: str,
        session_id: str,
        user_id: str | None,
        model: str,
        turn: RunningTurn,
        messages: list[ChatMessage],
    ) -> Allowance:
        """The budget of a turn's next model round (raises when the organization cannot pay it)."""
        now = self.clock()
        try:
            async with self.db.unit(Tenant.for_org(org_id)) as tx:
                limits = limits_of(await repo.budget_limits(tx, org_id))
                allowance, reservation_id = await reserve(
                    tx,
                    org_id,
                    session_id,
                    limits,
                    texts=[m.sent_text for m in messages] if limits.spends_are_limited else [],
                    prices=self.policy.prices(model),
                    max_tokens=self.policy.max_tokens,
                    now=now,
                    ttl=timedelta(seconds=self.policy.turn_timeout) + 2 * self.policy.lease_ttl,
                )
        except BudgetExhaustedError as refused:
            await self._record_refusal(refused, org_id, user_id, session_id)
            raise
        turn.metered = limits.spends_are_limited
        turn.reservation_id, turn.reserved_cents = reservation_id, allowance.reserve_cents
        return allowance

    async def _release(self, org_id: str, session_id: str, lease: str, reservation_id: str | None) -> None:
        try:
            async with self.db.unit(Tenant.for_org(org_id)) as tx:
                await repo.release_lease(tx, session_id, token=lease)
                if reservation_id is not None:
                    await repo.delete_reservation(tx, reservation_id)
        except Exception:
            log.exception("could not release the lease of session %s", session_id)

    # -- approvals (see approvals.py) -------------------------------------------------------------------

    def claim_lease(self, token: str) -> None:
        """A lease this process is taking (a continuation's, in its decision's transaction)."""
        self._own_leases.add(token)

    def release_claim(self, token: str) -> None:
        self._own_leases.discard(token)

    def plan_aborted(self, session_id: str, plan_id: str) -> None:
        """A plan was aborted: a turn running it here stops following it, and its readers are told."""
        live = self.live.get(session_id)
        if live is None or live.turn is None:
            return
        tools = live.turn.tools
        if tools is not None and tools.policy.plan is not None and tools.policy.plan.id == plan_id:
            tools.policy = dataclasses.replace(tools.policy, plan=None)
        self._publish(live, PlanComplete(plan_id=plan_id, status="aborted"))

    def policy_changed(self, session_id: str, policy: ApprovalPolicy, event: StreamEvent) -> None:
        """The session's approval policy changed (pause): a turn running here follows it from its
        next call on, and its readers are told. A turn on another process follows it from its
        next reply."""
        live = self.live.get(session_id)
        if live is None or live.turn is None:
            return
        if live.turn.tools is not None:
            live.turn.tools.policy = policy
        self._publish(live, event)

    # -- orphaned turns ------------------------------------------------------------------------------

    async def end_orphan(self, lease: HeldLease) -> bool:
        """End a turn whose process is gone (see `upkeep.py`); False when its lease moved on."""
        now = self.clock()
        async with self.db.unit(Tenant.for_org(lease.org_id)) as tx:
            ended = await repo.end_orphaned_turn(tx, lease, now=now)
        if ended:
            self._announce_recovery(lease)
        return ended

    def _announce_recovery(self, lease: HeldLease) -> None:
        """Log a recovered lease, and end its stream for readers on other processes."""
        log.warning(
            "took over the turn lease of session %s from %s (expired at %s); its reply is kept as interrupted",
            lease.id,
            lease.lease_owner,
            lease.lease_expires_at.isoformat() if lease.lease_expires_at else "unknown",
        )
        live = self.live.pop(lease.id, None)
        if live is not None:
            live.channel.close()

    def lost_frames(self, last: tuple[int, int]) -> list[bytes]:
        """The frames that end a stream whose producer is gone, numbered after `last`."""
        error = TurnLostError()
        lost = TurnError(code=error.error_code(), message=error.message)
        return [*encode(lost, last[0], last[1] + 1), *encode(Done(), last[0], last[1] + 2)]

    # -- live sessions -----------------------------------------------------------------------------

    def _live_session(self, session_id: str, org_id: str, user_id: str | None, now: datetime) -> LiveSession:
        live = self.live.get(session_id)
        if live is None:
            self._make_room()
            live = LiveSession(
                id=session_id,
                org_id=org_id,
                user_id=user_id,
                last_activity=now,
                channel=SessionChannel(session_id),
            )
            self.live[session_id] = live
        else:
            live.last_activity = now
            self.live.move_to_end(session_id)
        return live

    def _make_room(self) -> None:
        excess = len(self.live) - self.policy.max_live_sessions + 1
        if excess <= 0:
            return
        idle: list[str] = []
        for sid, live in self.live.items():  # least recently used first: usually the first few
            if live.turn is None:
                idle.append(sid)
                if len(idle) == excess:
                    break
        for sid in idle:
            dropped = self.live.pop(sid)
            dropped.channel.close()
            log.debug("dropped idle session %s from memory (capacity)", sid)

    async def attach(self, tenant: Tenant, user_id: str, session_id: str, last_event_id: str | None) -> Subscription:
        """Re-attach to the running (or just finished) turn, replaying after `last_event_id`: from
        this process's memory, or through Redis from the process that runs it."""
        row = await self._check_visible(tenant, user_id, session_id)
        after = parse_event_id(last_event_id)
        live = self.live.get(session_id)
        if live is not None and (live.turn is not None or live.channel.has_frames_after(after)):
            if after is None or after[0] < live.channel.turn:
                return live.channel.subscribe(replay_all=True)
            return live.channel.subscribe(replay_after=after)
        running = row["lease_token"] is not None
        stream = int(row["stream_number"])
        if self.relay is None or not self.relay.available:
            if running:
                raise ResumeUnavailableError()
            raise NoTurnRunningError()
        if not running and not await self._frames_after(session_id, stream, after):
            raise NoTurnRunningError()  # the last stream ended and the reader has all of it
        return self.relay.follow(
            session_id,
            stream=stream,
            after=after,
            owner=row["lease_owner"] if running else None,
            is_last=is_done_frame,
            lost=self.lost_frames,
            gap=_gap_frame,
        )

    async def _frames_after(self, session_id: str, stream: int, after: tuple[int, int] | None) -> bool:
        """Whether Redis has frames of the session's last stream after `after`. A turn that just
        ended on another process released its lease before its last frames reached Redis: until
        the stream's last frame is there, it is waited for (a second at most)."""
        assert self.relay is not None
        deadline = time.monotonic() + 1.0
        while not await self.relay.has_after(session_id, stream, after):
            if time.monotonic() > deadline or await self.relay.has_ended(session_id, stream, is_done_frame):
                return False
            await asyncio.sleep(0.05)
        return True

    def detach(self, session_id: str, subscription: Subscription) -> None:
        subscription.close()
        live = self.live.get(session_id)
        if live is not None:
            live.channel.unsubscribe(subscription)

    async def _check_visible(self, tenant: Tenant, user_id: str, session_id: str) -> dict[str, Any]:
        """The session's row; 404 unless the caller owns it in one of its organizations."""
        async with self.db.unit(tenant, readonly=True) as tx:
            row = await repo.get_session(tx, tenant, session_id, owner_id=user_id)
        if row is None:
            raise SessionNotFoundError()
        return row

    # -- Stop and close ------------------------------------------------------------------------------

    async def interrupt(self, tenant: Tenant, user_id: str, session_id: str) -> None:
        """Stop the session's running turn, wherever it runs: its partial reply is kept."""
        row = await self._check_visible(tenant, user_id, session_id)
        live = self.live.get(session_id)
        if live is not None and live.turn is not None:
            # Stopped in memory: no change to store, so the event has a unit of its own.
            async with self.db.unit(tenant) as tx:
                await self._audit_interrupt(tx, row["org_id"], user_id, session_id, live.turn.lease_token)
            self._stop(live.turn, "interrupt")
            return
        async with self.db.unit(tenant) as tx:
            now = self.clock()
            held = await repo.request_stop(tx, session_id, now=now)
            lease = await repo.held_lease(tx, session_id) if held is not None else None
            if held is not None:
                await self._audit_interrupt(tx, row["org_id"], user_id, session_id, held[0])
        if lease is None:
            raise NoTurnRunningError()
        if self.is_orphaned(lease, self.clock()) or await self.owner_gone(lease.lease_owner):
            await self.end_orphan(lease)  # nobody runs it: ending it is the Stop
        elif self.relay is not None:
            await self.relay.send_control("stop", session_id)  # else the owner sees the flag within a second

    async def _audit_interrupt(self, tx: Tx, org_id: str, user_id: str, session_id: str, turn: str) -> None:
        await audit.record(
            tx,
            audit.MESSAGE_INTERRUPT,
            org_id=org_id,
            user_id=user_id,
            now=self.clock(),
            session_id=session_id,
            detail={"turn": turn, "interrupted": True},
        )

    def on_control(self, operation: str, session_id: str) -> None:
        """Stop or close asked on another process (through Redis), for a turn that may run here."""
        live = self.live.get(session_id)
        if live is None or live.turn is None:
            return
        if operation == "stop":
            self._stop(live.turn, "interrupt")
        elif operation == "close":
            asyncio.get_running_loop().create_task(self._drop(session_id, reason="close"))

    def _stop(self, turn: RunningTurn, reason: str) -> bool:
        """Cancel the streaming part of a turn; False when it is not streaming any more."""
        stream = turn.stream_task
        if turn.stop_reason is not None:
            return True  # already stopping
        turn.stop_reason = reason
        if stream is not None and not stream.done():
            # Cancelled before it ever ran, the turn ends without calling the provider.
            stream.cancel()
            return True
        return False  # start_turn sets the stream task at once: it has ended

    async def close(self, tenant: Tenant, user_id: str, session_id: str) -> None:
        now = self.clock()
        async with self.db.unit(tenant) as tx:
            row = await repo.get_session(tx, tenant, session_id, owner_id=user_id)
            if row is None:
                raise SessionNotFoundError()
            await repo.set_status(tx, session_id, "closed", now=now)
            lease = await repo.held_lease(tx, session_id)
            await audit.record(
                tx,
                audit.SESSION_CLOSE,
                org_id=row["org_id"],
                user_id=user_id,
                now=now,
                session_id=session_id,
                detail={"previousStatus": row["status"]},
            )
        if session_id in self.live:
            await self._drop(session_id, reason="close")
        elif lease is not None:
            if self.is_orphaned(lease, now) or await self.owner_gone(lease.lease_owner):
                await self.end_orphan(lease)
                return
            if self.relay is not None:
                await self.relay.send_control("close", session_id)  # else the owner sees it within a second
            await self._turn_stored(tenant, session_id, lease.lease_token)

    async def _turn_stored(self, tenant: Tenant, session_id: str, lease_token: str) -> None:
        """Wait (a while at most) until another process has stored the turn it is stopping and
        released its lease: a close answers once the partial reply is kept, wherever it ran."""
        deadline = time.monotonic() + 10  # as long as a close here waits for its turn (_drop)
        while time.monotonic() < deadline:
            async with self.db.unit(tenant, readonly=True) as tx:
                held = await repo.held_lease(tx, session_id)
            if held is None or held.lease_token != lease_token:
                return
            await asyncio.sleep(0.05)

    async def _drop(self, session_id: str, *, reason: str) -> None:
        """Forget a live session: its running turn stops (for `reason`) and its streams end."""
        live = self.live.pop(session_id, None)
        if live is None:
            return
        turn = live.turn
        if turn is not None:
            if reason == "close":
                live.channel.close()  # the stream ends now, without `done`
            self._stop(turn, reason)
            if turn.task is not None:
                await asyncio.wait({turn.task}, timeout=10)
        live.channel.close()

    async def end_live(self, session_id: str, reason: str) -> None:
        """A session the database expired: its readers are told, its running turn stops."""
        live = self.live.get(session_id)
        if live is None:
            return
        if live.turn is None:
            error = SessionExpiredError()
            self._publish(live, TurnError(code=error.error_code(), message=error.message))
            self._publish(live, Done())
        await self._drop(session_id, reason=reason)

    # -- shutdown ------------------------------------------------------------------------------------

    def running_turns(self) -> list[tuple[LiveSession, RunningTurn]]:
        return [(live, live.turn) for live in self.live.values() if live.turn is not None]

    async def shutdown(self) -> None:
        """Stop running turns; each persists what it has and releases its lease."""
        tasks = []
        for _, turn in self.running_turns():
            if turn.task is not None:
                self._stop(turn, "shutdown")
                tasks.append(turn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for live in self.live.values():
            live.channel.close()
        self.live.clear()


def _open_session(row: TurnSession | None, tenant: Tenant, user_id: str) -> TurnSession:
    """The session as read for a turn, if it is the caller's and open: 404 unless the caller owns
    it, 409/410 when it is closed or expired."""
    if row is None or not tenant.can_see(row.org_id) or row.user_id != user_id:
        raise SessionNotFoundError()
    if row.status == "closed":
        raise SessionClosedError()
    if row.status == "expired":
        raise SessionExpiredError()
    return row


async def write_reply(
    tx: Tx, session_id: str, turn: RunningTurn, now: datetime, *, record: TurnRecord | None = None
) -> None:
    """Store a turn's reply: with a record, as it ends a round or the turn (with its usage);
    without one, as it stands, a checkpoint (never over a reply that is already finished)."""
    reply = turn.reply
    if record is None:
        content, parts, tokens, cents, estimated, finish = reply.answer(), reply.stored_parts(), None, None, False, None
    else:
        whole = record.message_tokens
        tokens = (whole.input_tokens, whole.output_tokens, whole.cache_read_tokens, whole.cache_write_tokens)
        content, parts, estimated, finish = record.text, record.parts, whole.estimated, record.finish_reason
        cents = record.message_cents - turn.unbilled_cents
    await repo.upsert_message(
        tx,
        message_id=turn.lease_token,
        session_id=session_id,
        position=turn.position,
        role="assistant",
        content=content,
        parts=parts,
        tokens=tokens,
        cost_cents=cents,
        usage_estimated=estimated,
        finish_reason=finish,
        created_at=now,
        keep_finished=record is None,
    )
    turn.checkpointed_chars = reply.size()


def _set_stream_task(turn: RunningTurn, task: asyncio.Task[TurnOutcome]) -> None:
    turn.stream_task = task


def _gap_frame(after: tuple[int, int], following: tuple[int, int]) -> bytes:
    gap = StreamGap(after_id=f"{after[0]}-{after[1]}", next_id=f"{following[0]}-{following[1]}")
    # Numbered as the frame it stands for the lost ones before: a reader's last id stays `after`.
    return encode(gap, after[0], after[1])[0]


def _tool_event(row: dict[str, Any], org_id: str, user_id: str | None, session_id: str, now: datetime) -> Record:
    """The audit event of a tool call stored as the turn first sees it (refused, run, or asked)."""
    detail = {"executionId": row["id"], "status": row["status"]}
    return audit.event(
        audit.tool_action(row["tool_name"]),
        org_id=org_id,
        user_id=user_id,
        now=now,
        session_id=session_id,
        detail=detail,
    )
