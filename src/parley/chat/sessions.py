"""SessionManager: admission, live sessions, turns, Stop, close, expiry and eviction.

The database is the truth (status, history, the turn lease); memory holds only a cache of live
sessions: their event channel and running turn. Past `max_live_sessions`, idle entries are
dropped from memory (never one with a running turn) and rehydrate from the database on their next
message: nothing is lost and nothing expires because of it. Expiry (2 h idle, 24 h age) is
written to the database, whether noticed by the sweeper or at admission.

Imports chat, providers, billing, bus and store; never the web layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from parley.billing.cost import Prices
from parley.bus.memory import SessionChannel, Subscription, parse_event_id
from parley.chat.admission import Admission, admit
from parley.chat.events import Done, MessageStart, StreamEvent, TitleUpdated, TurnError, encode
from parley.chat.prompt import require_text, sanitize_content
from parley.chat.turns import TurnOutcome, TurnRecord, TurnSpec, describe_parts, start_turn, stop_error
from parley.errors import (
    NoTurnRunningError,
    PayloadTooLargeError,
    SessionClosedError,
    SessionExpiredError,
    SessionNotFoundError,
    TurnInProgressError,
    ValidationFailedError,
)
from parley.providers.base import Provider
from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.ids import new_id
from parley.store.repositories import TurnSession, TurnTotals
from parley.store.tenancy import Tenant

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
    lease_ttl: timedelta = timedelta(seconds=60)
    prices: Callable[[str], Prices] = field(default=lambda _model: Prices())  # by model id


@dataclass(slots=True, eq=False)
class RunningTurn:
    task: asyncio.Task[None] | None = None
    stream_task: asyncio.Task[TurnOutcome] | None = None
    stop_reason: str | None = None
    lease_token: str = ""
    admission: Admission | None = None


@dataclass(slots=True, eq=False)
class LiveSession:
    id: str
    org_id: str
    user_id: str | None
    created_at: datetime
    last_activity: datetime
    channel: SessionChannel
    turn: RunningTurn | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class SessionManager:
    """Owns every live session and running turn of this process."""

    def __init__(
        self,
        *,
        db: Database,
        provider: Provider,
        policy: SessionPolicy,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.db = db
        self.provider = provider
        self.policy = policy
        self.clock = clock
        self.live: OrderedDict[str, LiveSession] = OrderedDict()
        self._turn_tasks: set[asyncio.Task[None]] = set()

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

    async def send_message(
        self,
        tenant: Tenant,
        user_id: str,
        session_id: str,
        content: str,
        page_context: dict[str, Any] | None = None,
    ) -> Subscription:
        """Admit a message and start its turn; the returned subscription sees every event of it.

        A `page_context` replaces the session's context snapshot from this turn on.
        """
        text = self.check_content(content)
        live_now = self.live.get(session_id)
        if live_now is not None and live_now.turn is not None:
            # Running here: refuse before touching the database (the lease would say the same,
            # unless it expired under the turn because renewals failed).
            await self._check_visible(tenant, user_id, session_id)
            raise TurnInProgressError()
        now = self.clock()
        lease = new_id()
        expired: str | None = None
        admission: Admission | None = None
        async with self.db.unit(tenant) as tx:
            row = await repo.session_for_turn(tx, session_id)
            if row is None or not tenant.can_see(row.org_id) or row.user_id != user_id:
                raise SessionNotFoundError()
            if row.status == "closed":
                raise SessionClosedError()
            if row.status == "expired":
                raise SessionExpiredError()
            expired = self._expiry(row, now)
            if expired:
                await repo.set_status(tx, session_id, "expired", now=now, only_if="active")
            else:
                admission = await admit(
                    tx,
                    row,
                    text=text,
                    lease=lease,
                    lease_ttl=self.policy.lease_ttl,
                    # A reservation outlives any turn: the turn timeout plus the lease's grace.
                    reservation_ttl=timedelta(seconds=self.policy.turn_timeout) + 2 * self.policy.lease_ttl,
                    now=now,
                    max_tokens=self.policy.max_tokens,
                    prices=self.policy.prices(row.model),
                    page_context=page_context,
                    count_turns=session_id not in self.live,
                )
        if admission is None:
            await self._drop(session_id, reason="idle", close_channel=True)
            raise SessionExpiredError(expired)

        live = self._live_session(row, now, admission.user_turns)
        if live.turn is not None:  # only possible if the lease expired under a live turn
            await self._release(row.org_id, session_id, lease, admission.reservation_id)
            raise TurnInProgressError()
        try:
            live.channel.begin_turn()
            subscription = live.channel.subscribe()  # before anything is published
            turn = RunningTurn(lease_token=lease, admission=admission)
            live.turn = turn
            if admission.title is not None:
                self._publish(live, TitleUpdated(title=admission.title))
            spec = self._turn_spec(live, row, text, turn, admission)
            # Queued before the response starts, so its first write carries it.
            self._publish(live, MessageStart(message_id=spec.message_id))
            turn.task = start_turn(spec)
        except BaseException:
            live.turn = None
            await self._release(row.org_id, session_id, lease, admission.reservation_id)
            raise
        self._turn_tasks.add(turn.task)
        turn.task.add_done_callback(self._turn_done)
        return subscription

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        self._turn_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("turn task failed", exc_info=task.exception())

    def _turn_spec(
        self, live: LiveSession, row: TurnSession, text: str, turn: RunningTurn, admission: Admission
    ) -> TurnSpec:
        org_id, session_id = row.org_id, row.id

        def set_stream_task(task: asyncio.Task[TurnOutcome]) -> None:
            turn.stream_task = task

        return TurnSpec(
            session_id=session_id,
            message_id=new_id(),
            system_prompt=admission.system_prompt,
            history=admission.history,
            user_text=text,
            model=row.model,
            max_tokens=admission.max_tokens,
            output_limit=admission.max_tokens if admission.metered and admission.max_tokens is not None else None,
            turn_timeout=self.policy.turn_timeout,
            provider=self.provider,
            prices=self.policy.prices(row.model),
            publish=partial(self._publish, live),
            persist=partial(self._persist, live, org_id, session_id, turn),
            clock=self.clock,
            stop_reason=lambda: turn.stop_reason,
            on_stream_task=set_stream_task,
        )

    def _publish(self, live: LiveSession, event: StreamEvent) -> None:
        channel = live.channel
        if channel.closed:
            return
        if type(event) is Done:
            live.turn = None
            channel.publish(event, encode, final=True)
        else:
            channel.publish(event, encode)

    async def _persist(
        self, live: LiveSession, org_id: str, session_id: str, turn: RunningTurn, record: TurnRecord | None
    ) -> None:
        """One transaction: the reply, session totals, cost rows, lease and reservation settled."""
        now = record.now if record else self.clock()
        admission = turn.admission
        async with self.db.unit(Tenant.for_org(org_id)) as tx:
            if admission is not None and admission.reservation_id is not None:
                await repo.delete_reservation(tx, admission.reservation_id)
            if record is None:
                await repo.release_lease(tx, session_id, token=turn.lease_token)
                return
            cost = record.cost_cents
            if admission is not None and admission.metered and cost > admission.reserved_cents:
                # Only a server that ignores max_tokens and packs several tokens per chunk gets
                # here: the organization is never billed past what it reserved.
                log.warning(
                    "session %s: turn cost %s cents exceeds its reservation %s; billing the reservation",
                    session_id,
                    cost,
                    admission.reserved_cents,
                )
                cost = admission.reserved_cents
            totals = TurnTotals(
                input_tokens=record.tokens.input_tokens,
                output_tokens=record.tokens.output_tokens,
                cache_read_tokens=record.tokens.cache_read_tokens,
                cache_write_tokens=record.tokens.cache_write_tokens,
                cost_cents=cost,
            )
            stored = bool(record.text or record.reasoning)
            if stored:
                tokens = record.tokens
                await repo.insert_message(
                    tx,
                    message_id=record.message_id,
                    session_id=session_id,
                    position=admission.user_position + 1 if admission is not None else 0,
                    role="assistant",
                    content=record.text,
                    parts=describe_parts(record.text, record.reasoning),
                    tokens=(
                        tokens.input_tokens,
                        tokens.output_tokens,
                        tokens.cache_read_tokens,
                        tokens.cache_write_tokens,
                    ),
                    cost_cents=cost,
                    usage_estimated=record.tokens.estimated,
                    finish_reason=record.finish_reason,
                    created_at=now,
                )
            await repo.record_turn(
                tx,
                session_id,
                totals=totals,
                count_turn=record.count_turn,
                now=now,
                lease_token=turn.lease_token,
                messages_added=1 if stored else 0,
            )
            if not record.tokens.is_zero or record.text:
                await repo.add_cost_usage(tx, org_id, totals=totals, now=now)
        live.last_activity = now

    async def _release(self, org_id: str, session_id: str, lease: str, reservation_id: str | None) -> None:
        try:
            async with self.db.unit(Tenant.for_org(org_id)) as tx:
                await repo.release_lease(tx, session_id, token=lease)
                if reservation_id is not None:
                    await repo.delete_reservation(tx, reservation_id)
        except Exception:
            log.exception("could not release the lease of session %s", session_id)

    # -- live sessions -----------------------------------------------------------------------------

    def _live_session(self, row: TurnSession, now: datetime, user_turns: int | None) -> LiveSession:
        live = self.live.get(row.id)
        if live is None:
            self._make_room()
            # Event ids continue across restarts: turn numbers count the session's user messages.
            live = LiveSession(
                id=row.id,
                org_id=row.org_id,
                user_id=row.user_id,
                created_at=row.created_at,
                last_activity=now,
                channel=SessionChannel(row.id, turn=max((user_turns or 1) - 1, 0)),
            )
            self.live[row.id] = live
        else:
            live.last_activity = now
            self.live.move_to_end(row.id)
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
        """Re-attach to the running (or just finished) turn, replaying after `last_event_id`."""
        await self._check_visible(tenant, user_id, session_id)
        live = self.live.get(session_id)
        after = parse_event_id(last_event_id)
        if live is None or (live.turn is None and not live.channel.has_frames_after(after)):
            raise NoTurnRunningError()
        if after is None or after[0] < live.channel.turn:
            return live.channel.subscribe(replay_all=True)
        return live.channel.subscribe(replay_after=after)

    def detach(self, session_id: str, subscription: Subscription) -> None:
        live = self.live.get(session_id)
        if live is not None:
            live.channel.unsubscribe(subscription)

    async def _check_visible(self, tenant: Tenant, user_id: str, session_id: str) -> None:
        """404 unless the caller owns this session in one of its organizations."""
        async with self.db.unit(tenant, readonly=True) as tx:
            if await repo.get_session(tx, tenant, session_id, owner_id=user_id) is None:
                raise SessionNotFoundError()

    async def interrupt(self, tenant: Tenant, user_id: str, session_id: str) -> None:
        await self._check_visible(tenant, user_id, session_id)
        live = self.live.get(session_id)
        if live is None or live.turn is None or not self._stop(live.turn, "interrupt"):
            raise NoTurnRunningError()

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
            if await repo.get_session(tx, tenant, session_id, owner_id=user_id) is None:
                raise SessionNotFoundError()
            await repo.set_status(tx, session_id, "closed", now=now)
        await self._drop(session_id, reason="close", close_channel=True)

    async def _drop(self, session_id: str, *, reason: str, close_channel: bool) -> None:
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
        if close_channel:
            live.channel.close()

    # -- background ---------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Expire sessions past their idle or age limit, in memory and in the database."""
        now = self.clock()
        for live in list(self.live.values()):
            if now - live.created_at > self.policy.max_age:
                reason = "expired"
            elif live.turn is None and now - live.last_activity > self.policy.idle_ttl:
                reason = "idle"
            else:
                continue
            await self._expire_live(live, reason, now)
        async with self.db.unit(Tenant.system()) as tx:
            await repo.expire_stale_sessions(tx, now=now, idle_ttl=self.policy.idle_ttl, max_age=self.policy.max_age)

    async def _expire_live(self, live: LiveSession, reason: str, now: datetime) -> None:
        if live.turn is None:
            error = stop_error(reason) or SessionExpiredError()
            self._publish(live, TurnError(code=error.error_code(), message=error.message))
            self._publish(live, Done())
        await self._drop(live.id, reason=reason, close_channel=True)
        async with self.db.unit(Tenant.for_org(live.org_id)) as tx:
            await repo.set_status(tx, live.id, "expired", now=now, only_if="active")

    async def renew_leases(self) -> None:
        now = self.clock()
        for live in list(self.live.values()):
            turn = live.turn
            if turn is None:
                continue
            try:
                async with self.db.unit(Tenant.for_org(live.org_id)) as tx:
                    await repo.renew_lease(tx, live.id, token=turn.lease_token, expires_at=now + self.policy.lease_ttl)
            except Exception:
                log.warning("could not renew the lease of session %s", live.id, exc_info=True)

    async def run_background(self, sweep_interval: float) -> None:
        """Lease renewal and expiry sweeps until cancelled."""
        lease_every = max(self.policy.lease_ttl.total_seconds() / 3, 0.05)
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.renew_leases()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + sweep_interval
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background maintenance failed")
            await asyncio.sleep(min(lease_every, sweep_interval))

    async def shutdown(self) -> None:
        """Stop running turns; each persists what it has and releases its lease."""
        tasks = []
        for live in self.live.values():
            if live.turn is not None and live.turn.task is not None:
                self._stop(live.turn, "shutdown")
                tasks.append(live.turn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for live in self.live.values():
            live.channel.close()
        self.live.clear()
