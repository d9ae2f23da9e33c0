"""The background upkeep of one process: its running turns, orphaned turns, expired sessions.

Every `TICK` seconds, for the turns this process runs that are older than a tick, one unit of work:
- checkpoints each reply that grew since its last checkpoint (at most `CHECKPOINT_EVERY` apart),
  so a crash loses at most about a second of what was streamed;
- renews each lease a third of its time-to-live after the last renewal;
- reads the sessions' Stop flags and statuses in one statement: a turn stopped or a session
  closed or expired on another process ends here within a tick (Redis, when configured, wakes
  it sooner).
Short turns (most of them) never reach a tick and cost nothing here.

Every `RECOVER_EVERY` seconds it ends orphaned turns: leases that expired (their process died),
and, at start-up, leases of this host's processes that are gone (a restarted process recognises
its predecessor's at once), and re-reads the tool definitions operators approved. And every
sweep interval it expires idle and old sessions, and tool calls nobody decided in time, by
conditional UPDATEs on what is stored, never by what this process happens to remember, and prunes
the audit trail past its retention.

It also keeps the gauges of `parley.metrics` that are states rather than events: the live
sessions of this process (every tick) and the tool calls waiting for a decision (read from the
database with the recovery).

Imports chat and store; never the web layer.
"""

from __future__ import annotations

import asyncio
import logging

from parley import metrics
from parley.chat import sessions
from parley.chat.sessions import RunningTurn, SessionManager
from parley.store import repositories as repo
from parley.store.tenancy import Tenant

log = logging.getLogger("parley.upkeep")

TICK = 0.5
CHECKPOINT_EVERY = 1.0
RECOVER_EVERY = 5.0


async def keep_turns(manager: SessionManager) -> None:
    """One tick: checkpoints, lease renewals, and what the database says the turns must do."""
    loop_now = asyncio.get_running_loop().time()
    due = [(live, turn) for live, turn in manager.running_turns() if loop_now - turn.started >= TICK]
    if not due:
        return
    now = manager.clock()
    renew_after = manager.policy.lease_ttl.total_seconds() / 3
    by_org: dict[str, list[tuple[str, RunningTurn]]] = {}
    asked: dict[str, RunningTurn] = {}
    for live, turn in due:
        by_org.setdefault(live.org_id, []).append((live.id, turn))
        asked[live.id] = turn
    states: list[tuple[str, str | None, str, object]] = []
    for org_id, turns in by_org.items():
        async with manager.db.unit(Tenant.for_org(org_id)) as tx:
            for session_id, turn in turns:
                checkpoint = loop_now - turn.checkpointed_at >= CHECKPOINT_EVERY
                if checkpoint or loop_now - turn.renewed >= renew_after:
                    # The session row first, as every writer of a turn takes it (see `_persist`).
                    await repo.keep_turn(
                        tx, session_id, token=turn.lease_token, expires_at=now + manager.policy.lease_ttl
                    )
                    turn.renewed = loop_now
                if checkpoint:
                    if turn.reply.size() > turn.checkpointed_chars:  # it grew
                        await sessions.write_reply(tx, session_id, turn, now)
                    turn.checkpointed_at = loop_now
            states += await repo.turn_states(tx, [session_id for session_id, _ in turns])
    for session_id, lease_token, status, stop_requested_at in states:
        # Judged against the turn read for, not whatever runs now: the unit may have waited, and
        # by now that turn may have ended and the session's next one begun.
        running = asked[session_id]
        holder = manager.live.get(session_id)
        if holder is None or holder.turn is not running:
            continue
        if lease_token is not None and lease_token != running.lease_token:
            log.warning("session %s: the turn's lease was taken over; stopping it here", session_id)
            manager._stop(running, "close")
        elif status != "active":
            reason = "close" if status == "closed" else "expired"
            asyncio.get_running_loop().create_task(manager._drop(session_id, reason=reason))
        elif stop_requested_at is not None:
            manager._stop(running, "interrupt")


async def recover_orphans(manager: SessionManager, *, at_start: bool = False) -> int:
    """End the turns nobody runs any more; how many: expired leases; at start-up, those of this
    host's gone processes; with Redis, those of processes that stopped announcing themselves."""
    now = manager.clock()
    async with manager.db.unit(Tenant.system(), readonly=True) as tx:
        leases = await repo.expired_leases(tx, now=now)
        if at_start:
            leases += await repo.leases_of_host(tx, manager.process.host_prefix)
        held = await repo.held_leases(tx) if manager.relay is not None and manager.relay.available else []
    gone = {owner for owner in {lease.lease_owner for lease in held} if await manager.owner_gone(owner)}
    leases += [lease for lease in held if lease.lease_owner in gone]
    ended = 0
    seen: set[str] = set()
    for lease in leases:
        if lease.id in seen or not (manager.is_orphaned(lease, now) or lease.lease_owner in gone):
            continue
        seen.add(lease.id)
        try:
            ended += await manager.end_orphan(lease)
        except Exception:
            log.exception("could not end the orphaned turn of session %s", lease.id)
    return ended


async def expire_sessions(manager: SessionManager) -> None:
    """Expire sessions past their idle or age limit, as stored; tell their live readers."""
    policy = manager.policy
    async with manager.db.unit(Tenant.system()) as tx:
        expired = await repo.expire_stale_sessions(
            tx, now=manager.clock(), idle_ttl=policy.idle_ttl, max_age=policy.max_age
        )
    for session_id in expired:
        await manager.end_live(session_id, "expired")


async def expire_approvals(manager: SessionManager) -> int:
    """Tool calls whose time for a decision ran out become `expired`, as stored (the reply they
    wait in is closed when its session's next message is admitted)."""
    async with manager.db.unit(Tenant.system()) as tx:
        expired = await repo.expire_pending(tx, now=manager.clock())
    metrics.tool_calls("expired", expired)
    return expired


async def prune_audit(manager: SessionManager, keep_days: int) -> int:
    """Delete audit events older than `keep_days` days (on PostgreSQL through the owner's function:
    the application may not delete them itself); how many went."""
    async with manager.db.unit(Tenant.system()) as tx:
        pruned = await repo.prune_audit_events(tx, keep_days=keep_days, now=manager.clock())
    if pruned:
        log.info("pruned %d audit events older than %d days", pruned, keep_days)
    return pruned


async def count_pending_approvals(manager: SessionManager) -> int:
    """The tool calls waiting for a decision, in every organization (a gauge every process reads)."""
    async with manager.db.unit(Tenant.system(), readonly=True) as tx:
        pending = await repo.pending_execution_count(tx, now=manager.clock())
    metrics.APPROVALS_PENDING.set(pending)
    return pending


async def run(manager: SessionManager, sweep_interval: float, *, audit_retention_days: int = 365) -> None:
    """The upkeep loop until cancelled."""
    loop = asyncio.get_running_loop()
    next_recovery = loop.time() + RECOVER_EVERY
    next_sweep = loop.time()
    while True:
        try:
            metrics.LIVE_SESSIONS.set(len(manager.live))
            await keep_turns(manager)
            if loop.time() >= next_recovery:
                next_recovery = loop.time() + RECOVER_EVERY
                await recover_orphans(manager)
                await count_pending_approvals(manager)
                if manager.tools is not None:
                    await manager.tools.refresh_pins(manager.db)  # an operator's `parley tools approve`
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + sweep_interval
                await expire_sessions(manager)
                await expire_approvals(manager)
                await prune_audit(manager, audit_retention_days)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background upkeep failed")
        await asyncio.sleep(TICK)
