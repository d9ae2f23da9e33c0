"""start_turn: history -> provider stream -> events -> persist -> cost -> done.

A turn runs in its own task, owned by the SessionManager, outside any request's transaction. The
streaming part runs in a child task so Stop/close/eviction can cancel exactly that part: whatever
arrived is still persisted and billed, the lease released, and `done` published. Never holds a
database session across the model stream.

Event order: message_start (published at admission, by the SessionManager) -> (content_delta |
reasoning_delta)* -> message_end -> done, or ... -> error -> done on failure, or ... -> done on
Stop. The end (message_end, error, done) is published once the turn is stored.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from parley.billing.cost import Prices, TokenCounts, cents_to_usd, cost_cents
from parley.chat.events import ContentDelta, Done, MessageEnd, ReasoningDelta, StreamEvent, TurnError
from parley.errors import (
    BudgetExhaustedError,
    ParleyError,
    ProviderError,
    ServerRestartingError,
    SessionExpiredError,
    TurnTimeoutError,
)
from parley.providers import base as provider
from parley.providers.base import ChatMessage, Finished, Provider, ProviderEvent, Usage, estimate_tokens

log = logging.getLogger("parley.turns")


def stop_error(reason: str) -> ParleyError | None:
    """What the client is told when a turn's stream is cancelled from outside, for this reason."""
    if reason == "expired":
        return SessionExpiredError("Session expired (24h limit). Start a new session.")
    if reason == "idle":
        return SessionExpiredError("Session expired due to inactivity. Start a new session.")
    if reason == "shutdown":
        return ServerRestartingError()
    return None  # a user Stop is not an error; a closed session's stream ends without events


@dataclass(slots=True)
class Reply:
    """What the model produced so far (kept when the stream is cancelled)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    chunks: int = 0
    usage: Usage | None = None
    finish_reason: str | None = None
    started: bool = False  # the stream task began (and so called the provider)


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """How the turn ended, and what to store."""

    finish_reason: str  # stop | length | interrupted | <error code>
    error: ParleyError | None  # published as an `error` event before done
    completed: bool
    reached_provider: bool = True


# A server that ignores max_tokens is cut off where the budget reservation ends.
BUDGET_CUT_OFF = TurnOutcome(finish_reason=BudgetExhaustedError.code, error=BudgetExhaustedError(), completed=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRecord:
    """Everything persisted at the end of a turn, in one transaction."""

    message_id: str
    text: str
    reasoning: str
    tokens: TokenCounts
    cost_cents: Decimal
    finish_reason: str
    count_turn: bool
    now: datetime


@dataclass(slots=True, kw_only=True)
class TurnSpec:
    """One turn's inputs and collaborators (constructor seams, no globals)."""

    session_id: str
    message_id: str
    system_prompt: str
    history: list[ChatMessage]  # read at admission; excludes the current message
    user_text: str
    model: str
    max_tokens: int | None
    output_limit: int | None  # metered: stop the stream past this many output chunks
    turn_timeout: float
    provider: Provider
    prices: Prices
    publish: Callable[[StreamEvent], None]
    persist: Callable[[TurnRecord], Awaitable[None]]
    clock: Callable[[], datetime]
    stop_reason: Callable[[], str | None]
    on_stream_task: Callable[[asyncio.Task[TurnOutcome]], None]
    reply: Reply = field(default_factory=lambda: Reply())  # what arrived so far (checkpointed while it grows)


def start_turn(spec: TurnSpec) -> asyncio.Task[None]:
    """Start the turn; returns the task that runs it to `done`.

    The streaming part is created first: its first step (the model request) then runs before
    whatever the caller queues after this call, such as writing the response head.
    """
    messages = [
        ChatMessage.text("system", spec.system_prompt),
        *spec.history,
        ChatMessage.text("user", spec.user_text),
    ]
    reply = spec.reply
    stream_task = asyncio.create_task(_consume(spec, messages, reply))
    spec.on_stream_task(stream_task)
    return asyncio.create_task(_run_turn(spec, messages, reply, stream_task), name=f"turn:{spec.session_id}")


async def _run_turn(
    spec: TurnSpec, messages: list[ChatMessage], reply: Reply, stream_task: asyncio.Task[TurnOutcome]
) -> None:
    try:
        outcome = await stream_task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        reason = spec.stop_reason()
        if not stream_task.cancelled() or reason is None or (current is not None and current.cancelling()):
            stream_task.cancel()
            raise
        if not reply.started:  # stopped before the provider was called
            await _end_without_provider(spec, None)
            return
        outcome = TurnOutcome(finish_reason="interrupted", error=stop_error(reason), completed=False)
    await _finish(spec, messages, reply, outcome)


async def _consume(spec: TurnSpec, messages: Sequence[ChatMessage], reply: Reply) -> TurnOutcome:
    reply.started = True
    limit = spec.output_limit if spec.output_limit is not None else sys.maxsize
    try:
        async with asyncio.timeout(spec.turn_timeout):
            stream = spec.provider.stream(messages, model=spec.model, max_tokens=spec.max_tokens)
            async with aclosing(stream) as batches:  # type: ignore[type-var]
                async for batch in batches:  # one per network read
                    if _take(spec, batch, reply, limit):
                        return BUDGET_CUT_OFF  # leaving the block closes the upstream stream
    except TimeoutError:
        minutes = spec.turn_timeout / 60
        shown = f"{minutes:g} minutes" if spec.turn_timeout >= 60 else f"{spec.turn_timeout:g} seconds"
        error = TurnTimeoutError(f"The model took longer than {shown}. Please try again.")
        return TurnOutcome(finish_reason=error.code, error=error, completed=False)
    except ProviderError as exc:
        partial = getattr(exc, "partial_usage", None)
        if isinstance(partial, Usage) and reply.usage is None:
            reply.usage = partial
        log.info("turn failed on session %s: %r", spec.session_id, exc)
        return TurnOutcome(finish_reason=exc.error_code(), error=exc, completed=False)
    return TurnOutcome(finish_reason=reply.finish_reason or "stop", error=None, completed=True)


def _take(spec: TurnSpec, batch: Sequence[ProviderEvent], reply: Reply, limit: int) -> bool:
    """Keep and publish one read's events; True when the output limit cut the reply short.

    Runs once per read: a run of answer (or reasoning) pieces is kept and published as one event.
    """
    cut_off = False
    for event in batch:
        if isinstance(event, provider.TextDelta | provider.ReasoningDelta):
            pieces = event.texts
            if reply.chunks + len(pieces) > limit:
                pieces = pieces[: max(limit - reply.chunks, 0)]
                cut_off = True
            reply.chunks += len(pieces)
            if type(event) is provider.TextDelta:
                reply.text += pieces
                spec.publish(ContentDelta(pieces))
            else:
                reply.reasoning += pieces
                spec.publish(ReasoningDelta(pieces))
            if cut_off:
                break
        elif type(event) is Usage:
            reply.usage = event
        elif type(event) is Finished:
            reply.finish_reason = event.reason
    return cut_off


def _token_counts(messages: Sequence[ChatMessage], reply: Reply, outcome: TurnOutcome) -> TokenCounts:
    usage = reply.usage
    if usage is not None:
        return TokenCounts(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            estimated=usage.estimated,
        )
    if reply.chunks == 0:
        return TokenCounts()  # nothing produced: nothing billed
    # Stopped or failed without server counts: count what we saw, and say it is an estimate.
    prompt_chars = sum(len(m.plain_text) for m in messages)
    return TokenCounts(input_tokens=estimate_tokens(prompt_chars), output_tokens=reply.chunks, estimated=True)


async def _finish(spec: TurnSpec, messages: Sequence[ChatMessage], reply: Reply, outcome: TurnOutcome) -> None:
    publish = spec.publish
    tokens = _token_counts(messages, reply, outcome)
    cents = cost_cents(tokens, spec.prices)
    record = TurnRecord(
        message_id=spec.message_id,
        text="".join(reply.text),
        reasoning="".join(reply.reasoning),
        tokens=tokens,
        cost_cents=cents,
        finish_reason=outcome.finish_reason,
        count_turn=outcome.reached_provider,
        now=spec.clock(),
    )
    error = outcome.error
    try:
        # Shielded: a shutdown arriving now must not lose the reply or leave the lease held.
        await asyncio.shield(spec.persist(record))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("persisting turn failed for session %s", spec.session_id)
        error = error or ParleyError("The reply could not be saved. Please try again.")
    # The end of the turn is published after it is stored: message_end, error and done then reach
    # the client together, in one write.
    if outcome.completed:
        publish(
            MessageEnd(
                input_tokens=tokens.input_tokens + tokens.cache_read_tokens + tokens.cache_write_tokens,
                output_tokens=tokens.output_tokens,
                cache_read_tokens=tokens.cache_read_tokens,
                cache_write_tokens=tokens.cache_write_tokens,
                cost_usd=cents_to_usd(cents),
                usage_estimated=tokens.estimated,
            )
        )
    if error is not None:
        publish(TurnError(code=error.error_code(), message=error.message))
    publish(Done())


async def _end_without_provider(spec: TurnSpec, error: ParleyError | None) -> None:
    """The provider was never called (stopped first): the turn does not count, and the reply is
    stored empty, so the conversation still alternates."""
    record = TurnRecord(
        message_id=spec.message_id,
        text="",
        reasoning="",
        tokens=TokenCounts(),
        cost_cents=Decimal(0),
        finish_reason="interrupted" if error is None else error.error_code(),
        count_turn=False,
        now=spec.clock(),
    )
    try:
        await asyncio.shield(spec.persist(record))
    except Exception:
        log.exception("releasing the lease failed for session %s", spec.session_id)
    if error is not None:
        spec.publish(TurnError(code=error.error_code(), message=error.message))
    spec.publish(Done())


def describe_parts(text: str, reasoning: str) -> list[dict[str, Any]]:
    """The stored parts of an assistant message: reasoning apart from the answer."""
    parts: list[dict[str, Any]] = []
    if reasoning:
        parts.append({"type": "reasoning", "text": reasoning})
    if text:
        parts.append({"type": "text", "text": text})
    return parts
