"""start_turn: history -> model rounds (and the tool calls between them) -> persist -> cost -> done.

A turn runs in its own task, owned by the SessionManager, outside any request's transaction. Each
phase of it (a model round, or the tool calls after one) runs in a child task, so Stop/close/
eviction cancel exactly that phase: whatever arrived is still persisted and billed, the lease
released, and `done` published. Never holds a database session across the model stream.

A turn is model rounds: answer, tool calls, results, answer... (at most `max_rounds` rounds end
in calls; the round after offers no tools, so the model answers). A round whose calls include
some that wait for a person stores everything and ends the stream (`approval_required`, then
message_end and done) and releases the lease: nothing waits in memory. The decision that settles
the last of them starts a continuation of the same reply (`TurnTools.resume`) on whichever
process receives it. The turn timeout counts model time only.

Event order: message_start (published at admission, by the SessionManager) -> (content_delta |
reasoning_delta | tool_use_start | tool_result | plan_step_*)* -> message_end -> done; or
... -> error -> done on failure; ... -> done on Stop; ... approval_required+ -> message_end ->
done when calls wait. The end (message_end, error, done) is published once the turn is stored.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from parley.billing.budget import Allowance
from parley.billing.cost import Prices, TokenCounts, cents_to_usd, cost_cents
from parley.chat import tool_calls
from parley.chat.context import SUMMARY_TOKENS, Fitted, Summary, summary_request, with_summary
from parley.chat.events import (
    ApprovalRequired,
    ContentDelta,
    ContextTrimmed,
    Done,
    MessageEnd,
    PlanApprovalRequired,
    PlanComplete,
    PlanStepComplete,
    PlanStepStart,
    ReasoningDelta,
    StreamEvent,
    ToolResult,
    ToolUseStart,
    TurnError,
)
from parley.chat.history import replay_reply
from parley.chat.tool_calls import ApprovalPolicy, PlannedCall, result_part
from parley.errors import (
    BudgetExhaustedError,
    ParleyError,
    ProviderError,
    ProviderErrorKind,
    ReplyTooLargeError,
    ServerRestartingError,
    SessionExpiredError,
    ToolRoundLimitError,
    TurnTimeoutError,
)
from parley.providers import base as provider
from parley.providers.base import ChatMessage, Finished, Provider, ProviderEvent, ToolChoice, Usage, estimate_tokens
from parley.tools import ToolCatalog

log = logging.getLogger("parley.turns")

MAX_PARALLEL_CALLS = 8
# A metered reply is cut when its text passes this many characters per token it may have: lenient
# (English runs about 4.5 characters a token) so an honest server's last tokens are never cut,
# and still a wall for one that packs a whole reply into one piece. Billing counts 4 (base.py).
CUT_CHARS_PER_TOKEN = 6
AWAITING_APPROVAL = "awaiting_approval"  # the finish reason of a reply whose calls wait


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
    """The reply so far: the rounds stored as parts, and the model round streaming now (its text
    is kept when the stream is cancelled)."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    chunks: int = 0  # pieces of this round's text and reasoning
    chars: int = 0  # their characters
    usage: Usage | None = None
    finish_reason: str | None = None
    started: bool = False  # a model round began (and so called the provider)
    calls: list[provider.ToolCallReady] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)  # the rounds before this one
    parts_size: int = 0  # how much they hold, for checkpoints
    tool_rounds: int = 0  # model rounds that ended in tool calls
    settled: TokenCounts = field(default_factory=TokenCounts)  # usage of the rounds before
    extra: TokenCounts = field(default_factory=TokenCounts)  # usage outside a round (a summary), not yet recorded
    prompt_chars: int = 0  # the characters of the current round's prompt
    settled_cents: Decimal = Decimal(0)
    model_seconds: float = 0.0  # time spent waiting for the model, across rounds
    first_token_at: float = 0.0  # time.monotonic() when the first piece arrived (0: none yet)

    def stored_parts(self) -> list[dict[str, Any]]:
        current = describe_parts("".join(self.text), "".join(self.reasoning))
        return [*self.parts, *current] if self.parts else current

    def answer(self) -> str:
        """The answer text of every round (the message's `content`; reasoning excluded)."""
        if not self.parts:
            return "".join(self.text)
        texts = [p["text"] for p in self.parts if p.get("type") == "text"]
        if self.text:
            texts.append("".join(self.text))
        return "\n\n".join(t for t in texts if t)

    def size(self) -> int:
        return self.parts_size + sum(map(len, self.text)) + sum(map(len, self.reasoning))

    def add_part(self, part: dict[str, Any]) -> None:
        self.parts.append(part)
        self.parts_size += len(str(part.get("text") or part.get("output") or "")) + 1

    def close_round(self) -> None:
        """Move the round that just streamed into the stored parts (its usage stays until the
        round is recorded)."""
        for part in describe_parts("".join(self.text), "".join(self.reasoning)):
            self.add_part(part)
        self.text, self.reasoning, self.calls = [], [], []
        self.finish_reason = None

    @property
    def output_estimate(self) -> int:
        """This round's output in tokens as counted here: by its pieces, or by its text when that
        says more (about four characters a token)."""
        return max(self.chunks, estimate_tokens(self.chars))


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """How a phase of the turn ended, and what to store."""

    finish_reason: str  # stop | length | tool_calls | interrupted | awaiting_approval | <error code>
    error: ParleyError | None  # published as an `error` event before done
    completed: bool
    reached_provider: bool = True


PAUSED = TurnOutcome(finish_reason=AWAITING_APPROVAL, error=None, completed=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRecord:
    """A write of the reply together with its cost, in one transaction: at the end of the turn
    (`finish_reason` set, lease released), when its calls wait (`awaiting`, lease released), or
    between rounds (`finish_reason` None). `tokens`/`cost_cents` are what this write adds to
    the totals; `message_*` are the whole reply's."""

    message_id: str
    text: str
    parts: list[dict[str, Any]]
    tokens: TokenCounts
    cost_cents: Decimal
    message_tokens: TokenCounts
    message_cents: Decimal
    finish_reason: str | None
    count_turn: bool
    now: datetime
    executions: tuple[dict[str, Any], ...] = ()  # ai_tool_executions rows to insert
    starting: tuple[str, ...] = ()  # approved executions that become `executing` now
    plans: tuple[dict[str, Any], ...] = ()  # ai_action_plans rows to insert
    awaiting: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CallUpdate:
    """A call's row changes (status, output...), written with the reply as it stands (`Reply`)."""

    execution_id: str
    changes: dict[str, Any]
    tool_name: str = ""
    plan_id: str | None = None  # the running plan it advances
    plan_step: int | None = None  # ... to this step index
    plan_done: bool = False


@dataclass(slots=True, kw_only=True)
class TurnTools:
    """What a turn with tools needs beyond a plain one."""

    catalog: ToolCatalog
    policy: ApprovalPolicy
    store_call: Callable[[CallUpdate], Awaitable[None]]
    reserve: Callable[[list[ChatMessage]], Awaitable[Allowance]]  # the next round's budget; raises
    new_id: Callable[[], str]
    choice: ToolChoice = "auto"  # for the turn's first round only
    max_rounds: int = 8
    approval_ttl: timedelta = timedelta(minutes=10)
    resume: list[PlannedCall] | None = None  # a continuation: the decided calls of the paused round


@dataclass(slots=True, kw_only=True)
class TurnContext:
    """How the history was fitted to the model's window (chat/context.py), for what the turn says
    and does about it: announce the cut, summarize what was dropped, fit again on an overflow."""

    system_prompt: str  # as rendered, without a summary
    dropped: int  # stored messages the model is not sent
    summary: Summary | None  # a stored summary in use
    to_summarize: list[ChatMessage]  # dropped now, to be summarized (summarize strategy)
    refit: Callable[[int | None], Fitted | None] | None = None  # fit tighter (a window an error stated)
    calibrate: Callable[[float], None] | None = None  # tokens per character, as the server counted


@dataclass(slots=True, kw_only=True)
class TurnSpec:
    """One turn's inputs and collaborators (constructor seams, no globals)."""

    session_id: str
    message_id: str
    prompt: list[ChatMessage]  # everything before the reply: system prompt, history, the message
    model: str
    max_tokens: int | None
    output_limit: int | None  # metered: stop the stream past this many output tokens (as counted here)
    turn_timeout: float
    provider: Provider
    prices: Prices
    publish: Callable[[StreamEvent], None]
    persist: Callable[[TurnRecord], Awaitable[None]]
    clock: Callable[[], datetime]
    stop_reason: Callable[[], str | None]
    on_stream_task: Callable[[asyncio.Task[TurnOutcome]], None]
    reply: Reply = field(default_factory=lambda: Reply())  # what arrived so far (checkpointed while it grows)
    tools: TurnTools | None = None
    max_reply_chars: int = 200_000  # a reply stops past this many characters (reply_too_large)
    context: TurnContext | None = None
    count_turn: bool = True  # False for a continuation: its turn was counted when it began
    observe: Callable[[TurnOutcome], None] = lambda _outcome: None  # the turn ended, stored (metrics)


def start_turn(spec: TurnSpec) -> asyncio.Task[None]:
    """Start the turn; returns the task that runs it to `done`.

    The first phase is created first: its first step (the model request) then runs before
    whatever the caller queues after this call, such as writing the response head.
    """
    reply = spec.reply
    tools = spec.tools
    if tools is not None and tools.resume is not None:
        reply.started = True  # a continuation: the reply exists, a Stop keeps it as it is
        first = asyncio.create_task(_resume(spec, tools, tools.resume))
    else:
        first = asyncio.create_task(_first_round(spec, reply))
    spec.on_stream_task(first)
    return asyncio.create_task(_run_turn(spec, reply, first), name=f"turn:{spec.session_id}")


def _round_tools(spec: TurnSpec, *, first_round: bool) -> tuple[list[provider.ToolSpec], ToolChoice]:
    """The tools offered in the next round, and the choice. A forced tool is the person's request
    for that one call: the rounds after it answer without tools, as do those past the round cap."""
    tools = spec.tools
    if tools is None or spec.reply.tool_rounds >= tools.max_rounds:
        return [], "none"
    if not first_round and isinstance(tools.choice, provider.ForcedTool):
        return [], "none"
    offered = tool_calls.offered_tools(tools.catalog, tools.policy)
    choice = tools.choice if first_round else "auto"
    if isinstance(choice, provider.ForcedTool) and choice.name not in {t.name for t in offered}:
        choice = "auto"
    return offered, choice if offered else "none"


async def _run_turn(spec: TurnSpec, reply: Reply, phase: asyncio.Task[TurnOutcome]) -> None:
    while True:
        try:
            outcome = await phase
        except asyncio.CancelledError:
            current = asyncio.current_task()
            reason = spec.stop_reason()
            if not phase.cancelled() or reason is None or (current is not None and current.cancelling()):
                phase.cancel()
                raise
            if not reply.started:  # stopped before the provider was called
                await _end_without_provider(spec, None)
                return
            outcome = TurnOutcome(finish_reason="interrupted", error=stop_error(reason), completed=False)
        if outcome is PAUSED:
            return
        if outcome.finish_reason == "tool_calls" and outcome.completed and spec.tools is not None:
            phase = asyncio.create_task(_next_round(spec, reply))
            spec.on_stream_task(phase)
            continue
        await _finish(spec, reply, outcome)
        return


async def _first_round(spec: TurnSpec, reply: Reply) -> TurnOutcome:
    """The turn's first model round, after what its history needs: a summary of what no longer
    fits (summarize strategy), the announcement of the cut; and one more try, fitted tighter, when
    the server says the prompt is too long before it said anything else."""
    context = spec.context
    if context is not None:
        reply.started = True
        summarized = False
        if context.to_summarize:
            summarized = await _summarize(spec, context, reply)
        if context.dropped:
            _announce_cut(spec, reply, context.dropped, summarized or context.summary is not None)
    outcome = await _consume(spec, reply, *_round_tools(spec, first_round=True))
    error = outcome.error
    if (
        context is not None
        and context.refit is not None
        and isinstance(error, ProviderError)
        and error.kind is ProviderErrorKind.CONTEXT_LENGTH
        and reply.chunks == 0
        and not reply.calls
    ):
        fitted = context.refit(error.window)
        if fitted is not None:
            spec.prompt = [
                ChatMessage.text("system", with_summary(context.system_prompt, _summary_text(context, reply))),
                *fitted.history,
                spec.prompt[-1],
            ]
            spec.max_tokens = (
                fitted.max_tokens
                if spec.max_tokens is None
                else min(spec.max_tokens, fitted.max_tokens or spec.max_tokens)
            )
            _announce_cut(spec, reply, fitted.dropped_rows, context.summary is not None)
            reply.usage = None
            outcome = await _consume(spec, reply, *_round_tools(spec, first_round=True))
    return outcome


def _summary_text(context: TurnContext, reply: Reply) -> str | None:
    for part in reversed(reply.parts):
        if part.get("type") == "summary":
            return str(part["text"])
    return context.summary.text if context.summary is not None else None


def _announce_cut(spec: TurnSpec, reply: Reply, dropped: int, summarized: bool) -> None:
    """Tell the readers, and keep in the reply (for the page after a reload), what the model does
    not see."""
    reply.parts = [p for p in reply.parts if p.get("type") != "context_trimmed"]
    reply.parts.insert(0, {"type": "context_trimmed", "droppedMessages": dropped, "summarized": summarized})
    spec.publish(ContextTrimmed(dropped_messages=dropped, summarized=summarized))


async def _summarize(spec: TurnSpec, context: TurnContext, reply: Reply) -> bool:
    """Condense what was dropped (and the summary before it) with one model call; the new summary
    goes into the system prompt and the reply's parts. False, and the turn goes on trimmed, when
    the call fails. Its usage is billed with the turn's first round."""
    request = summary_request(context.summary.text if context.summary is not None else None, context.to_summarize)
    pieces: list[str] = []
    usage: Usage | None = None
    try:
        async with asyncio.timeout(spec.turn_timeout - reply.model_seconds):
            stream = spec.provider.stream(request, model=spec.model, max_tokens=SUMMARY_TOKENS)
            async with aclosing(stream) as batches:  # type: ignore[type-var]
                async for batch in batches:
                    for event in batch:
                        if type(event) is provider.TextDelta:
                            pieces += event.texts
                        elif type(event) is Usage:
                            usage = event
    except (ProviderError, TimeoutError) as exc:
        log.warning("session %s: summarizing the dropped history failed (%r); trimming instead", spec.session_id, exc)
        return False
    text = "".join(pieces).strip()
    if usage is not None:
        reply.extra = reply.extra + TokenCounts(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            estimated=usage.estimated,
        )
    else:
        chars = sum(len(m.sent_text) for m in request)
        reply.extra = reply.extra + TokenCounts(
            input_tokens=estimate_tokens(chars), output_tokens=estimate_tokens(len(text)), estimated=True
        )
    if not text:
        return False
    reply.add_part({"type": "summary", "text": text, "covers": context.dropped})
    spec.prompt[0] = ChatMessage.text("system", with_summary(context.system_prompt, text))
    return True


async def _consume(spec: TurnSpec, reply: Reply, offered: list[provider.ToolSpec], choice: ToolChoice) -> TurnOutcome:
    """One model round."""
    reply.started = True
    limit = spec.output_limit if spec.output_limit is not None else sys.maxsize
    remaining = spec.turn_timeout - reply.model_seconds
    started = time.monotonic()
    messages = spec.prompt if not reply.parts else [*spec.prompt, *replay_reply(reply.parts)]
    reply.prompt_chars = sum(len(m.sent_text) for m in messages)
    try:
        async with asyncio.timeout(max(remaining, 0.001)):
            stream = spec.provider.stream(
                messages, model=spec.model, max_tokens=spec.max_tokens, tools=offered, tool_choice=choice
            )
            async with aclosing(stream) as batches:  # type: ignore[type-var]
                async for batch in batches:  # one per network read
                    cut = _take(spec, batch, reply, limit)
                    if cut is not None:  # leaving the block closes the upstream stream
                        return TurnOutcome(finish_reason=cut.code, error=cut, completed=False)
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
    finally:
        reply.model_seconds += time.monotonic() - started
    if reply.calls:
        if not offered:  # a server that calls tools it was not given, or past the round cap
            too_many = ToolRoundLimitError(spec.tools.max_rounds if spec.tools is not None else 0)
            reply.calls = []
            return TurnOutcome(finish_reason=too_many.code, error=too_many, completed=False)
        return TurnOutcome(finish_reason="tool_calls", error=None, completed=True)
    return TurnOutcome(finish_reason=reply.finish_reason or "stop", error=None, completed=True)


def _take(spec: TurnSpec, batch: Sequence[ProviderEvent], reply: Reply, limit: int) -> ParleyError | None:
    """Keep and publish one read's events; the error that cut the reply short, if one did.

    Runs once per read: a run of answer (or reasoning) pieces is kept and published as one event.
    What was produced is measured by its text as well as its pieces: a server that packs a whole
    reply into one piece is cut off (CUT_CHARS_PER_TOKEN) and billed (`Reply.output_estimate`) by
    the text it sent.
    """
    for event in batch:
        if isinstance(event, provider.TextDelta | provider.ReasoningDelta):
            pieces = event.texts
            size = sum(map(len, pieces))
            chars = reply.chars + size
            cut: ParleyError | None = None
            if (
                reply.chunks + len(pieces) > limit
                or chars > limit * CUT_CHARS_PER_TOKEN
                or chars > spec.max_reply_chars
            ):
                pieces, cut = _cut(spec, reply, pieces, limit)
                size = sum(map(len, pieces))
            reply.chunks += len(pieces)
            reply.chars += size
            if not reply.first_token_at:
                reply.first_token_at = time.monotonic()
            if type(event) is provider.TextDelta:
                reply.text += pieces
                spec.publish(ContentDelta(pieces))
            else:
                reply.reasoning += pieces
                spec.publish(ReasoningDelta(pieces))
            if cut is not None:
                return cut
        elif type(event) is Usage:
            reply.usage = event
        elif type(event) is Finished:
            reply.finish_reason = event.reason
        elif type(event) is provider.ToolCallReady:
            reply.calls.append(event)
        # ToolCallStarted: the call shows once it is complete (tool_use_start or approval_required)
    return None


def _cut(spec: TurnSpec, reply: Reply, pieces: list[str], limit: int) -> tuple[list[str], ParleyError]:
    """The pieces that still fit the output limit (metered turns) and the reply's size cap, and
    why the rest does not."""
    kept: list[str] = []
    chunks, chars = reply.chunks, reply.chars
    for piece in pieces:
        if chunks + 1 > limit:
            return kept, BudgetExhaustedError()
        budget_room = limit * CUT_CHARS_PER_TOKEN - chars
        size_room = spec.max_reply_chars - chars
        room = min(size_room, budget_room)
        if len(piece) > room:
            if room > 0:
                kept.append(piece[:room])
            if size_room <= budget_room:
                return kept, ReplyTooLargeError(spec.max_reply_chars)
            return kept, BudgetExhaustedError()
        kept.append(piece)
        chunks += 1
        chars += len(piece)
    raise AssertionError("_cut is called only for pieces that pass a limit")


def _token_counts(messages: Sequence[ChatMessage], reply: Reply, output_limit: int | None) -> TokenCounts:
    """The usage of the model round that just ended (or was cut): the server's counts, else (or
    past them, when they are the provider's own estimate) what was counted here. An estimate of
    a metered round is never more than its limit: the stream was cut there (by its pieces, or its
    text at CUT_CHARS_PER_TOKEN), and its reservation, which the budget can afford, holds that."""
    usage = reply.usage
    estimate = reply.output_estimate if output_limit is None else min(reply.output_estimate, output_limit)
    if usage is not None:
        output = usage.output_tokens
        if usage.estimated:
            output = max(output, estimate)
        return TokenCounts(
            input_tokens=usage.input_tokens,
            output_tokens=output,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            estimated=usage.estimated,
        )
    if reply.chunks == 0:
        return TokenCounts()  # nothing produced: nothing billed
    # Stopped or failed without server counts: count what we saw, and say it is an estimate.
    prompt_chars = sum(len(m.sent_text) for m in messages)
    return TokenCounts(input_tokens=estimate_tokens(prompt_chars), output_tokens=estimate, estimated=True)


def _record(
    spec: TurnSpec,
    reply: Reply,
    *,
    finish_reason: str | None,
    count_turn: bool,
    executions: Sequence[dict[str, Any]] = (),
    starting: Sequence[str] = (),
    plans: Sequence[dict[str, Any]] = (),
    awaiting: bool = False,
) -> TurnRecord:
    """The write of the reply as it stands, with the usage of the round that just ended (taken
    out of `reply`: the next write adds only what comes after)."""
    round_tokens = _token_counts(spec.prompt, reply, spec.output_limit)
    context = spec.context
    if context is not None and context.calibrate is not None and not round_tokens.estimated and reply.prompt_chars:
        prompt_tokens = round_tokens.input_tokens + round_tokens.cache_read_tokens + round_tokens.cache_write_tokens
        if prompt_tokens:
            context.calibrate(prompt_tokens / reply.prompt_chars)
    tokens = round_tokens + reply.extra
    reply.extra = TokenCounts()
    cents = cost_cents(tokens, spec.prices)
    reply.settled = reply.settled + tokens
    reply.settled_cents += cents
    reply.usage, reply.chunks, reply.chars = None, 0, 0
    return TurnRecord(
        message_id=spec.message_id,
        text=reply.answer(),
        parts=reply.stored_parts(),
        tokens=tokens,
        cost_cents=cents,
        message_tokens=reply.settled,
        message_cents=reply.settled_cents,
        finish_reason=finish_reason,
        count_turn=count_turn,
        now=spec.clock(),
        executions=tuple(executions),
        starting=tuple(starting),
        plans=tuple(plans),
        awaiting=awaiting,
    )


async def _persist(spec: TurnSpec, record: TurnRecord) -> ParleyError | None:
    """Store a record, shielded: a shutdown arriving now must not lose the reply or leave the lease
    held. An error to publish when it could not be stored."""
    try:
        await asyncio.shield(spec.persist(record))
    except asyncio.CancelledError:
        raise
    except ParleyError as exc:
        return exc
    except Exception:
        log.exception("persisting turn failed for session %s", spec.session_id)
        return ParleyError("The reply could not be saved. Please try again.")
    return None


def _message_end(reply: Reply, spec: TurnSpec) -> MessageEnd:
    tokens = reply.settled
    return MessageEnd(
        input_tokens=tokens.input_tokens + tokens.cache_read_tokens + tokens.cache_write_tokens,
        output_tokens=tokens.output_tokens,
        cache_read_tokens=tokens.cache_read_tokens,
        cache_write_tokens=tokens.cache_write_tokens,
        cost_usd=cents_to_usd(reply.settled_cents),
        usage_estimated=tokens.estimated,
    )


async def _finish(spec: TurnSpec, reply: Reply, outcome: TurnOutcome) -> None:
    record = _record(
        spec, reply, finish_reason=outcome.finish_reason, count_turn=spec.count_turn and outcome.reached_provider
    )
    error = await _persist(spec, record) or outcome.error
    if outcome.error is not None and error is not outcome.error:
        error = outcome.error  # the turn's own failure says more than a failed save
    # The end of the turn is published after it is stored: message_end, error and done then reach
    # the client together, in one write.
    spec.observe(outcome)
    publish = spec.publish
    if outcome.completed:
        publish(_message_end(reply, spec))
    if error is not None:
        publish(TurnError(code=error.error_code(), message=error.message))
    publish(Done())


async def _end_without_provider(spec: TurnSpec, error: ParleyError | None) -> None:
    """The provider was never called (stopped first): the turn does not count, and the reply is
    stored empty, so the conversation still alternates."""
    record = TurnRecord(
        message_id=spec.message_id,
        text="",
        parts=[],
        tokens=TokenCounts(),
        cost_cents=Decimal(0),
        message_tokens=TokenCounts(),
        message_cents=Decimal(0),
        finish_reason="interrupted" if error is None else error.error_code(),
        count_turn=False,
        now=spec.clock(),
    )
    try:
        await asyncio.shield(spec.persist(record))
    except Exception:
        log.exception("releasing the lease failed for session %s", spec.session_id)
    spec.observe(TurnOutcome(finish_reason=record.finish_reason or "", error=error, completed=False))
    if error is not None:
        spec.publish(TurnError(code=error.error_code(), message=error.message))
    spec.publish(Done())


# --- tool rounds ---------------------------------------------------------------------------------


async def _next_round(spec: TurnSpec, reply: Reply) -> TurnOutcome:
    """The calls of the round that just ended: sort them, store them with the round, run those
    that need no one, and either pause for the rest or go on to the next model round."""
    tools = spec.tools
    assert tools is not None
    offered = tool_calls.offered_tools(tools.catalog, tools.policy)
    planned = tool_calls.plan_round(
        reply.calls, catalog=tools.catalog, policy=tools.policy, offered=offered, new_id=tools.new_id
    )
    reply.tool_rounds += 1
    round_number = reply.tool_rounds
    now = spec.clock()
    reply.close_round()
    for call in planned:
        reply.add_part(call.call_part())
    for call in planned:
        if call.disposition == "refused":
            reply.add_part(result_part(call.call_id, call.name, call.refusal or "", is_error=True))
    stored = [
        _execution_row(spec, call, round_number, now) for call in planned if call.disposition in ("refused", "run")
    ]
    error = await _persist(
        spec, _record(spec, reply, finish_reason=None, count_turn=spec.count_turn, executions=stored)
    )
    spec.count_turn = False  # counted once, with the turn's first write
    if error is not None:
        return TurnOutcome(finish_reason=error.error_code(), error=error, completed=False)
    for call in planned:
        if call.disposition == "refused":
            spec.publish(
                ToolResult(tool_use_id=call.call_id, tool_name=call.name, output=call.refusal or "", is_error=True)
            )
    waiting = [call for call in planned if call.disposition in ("ask", "propose")]
    return await _run_calls(spec, tools, [c for c in planned if c.disposition == "run"], waiting=waiting)


async def _resume(spec: TurnSpec, tools: TurnTools, decided: Sequence[PlannedCall]) -> TurnOutcome:
    """A continuation's first phase: the decided calls of the paused round. Answered ones (denied,
    expired, a plan decided) get their results; approved ones become `executing` in one commit,
    before any of them runs, then run."""
    reply = spec.reply
    tools.resume = None
    answered = [c for c in decided if c.disposition == "refused"]
    runnable = [c for c in decided if c.disposition == "run"]
    for call in answered:
        reply.add_part(result_part(call.call_id, call.name, call.refusal or "", is_error=call.answer_is_error))
    record = _record(spec, reply, finish_reason=None, count_turn=False, starting=[c.execution_id for c in runnable])
    error = await _persist(spec, record)
    if error is not None:
        return TurnOutcome(finish_reason=error.error_code(), error=error, completed=False)
    for call in answered:
        spec.publish(
            ToolResult(
                tool_use_id=call.call_id, tool_name=call.name, output=call.refusal or "", is_error=call.answer_is_error
            )
        )
    return await _run_calls(spec, tools, runnable)


async def _run_calls(
    spec: TurnSpec, tools: TurnTools, runnable: Sequence[PlannedCall], *, waiting: Sequence[PlannedCall] = ()
) -> TurnOutcome:
    """Run calls whose rows are `executing`, concurrently (at most MAX_PARALLEL_CALLS at once);
    then pause for `waiting`, or reserve the next round's budget and run it."""
    reply = spec.reply
    if runnable:
        limit = asyncio.Semaphore(MAX_PARALLEL_CALLS)

        async def run(call: PlannedCall) -> None:
            async with limit:
                await _run_call(spec, tools, call)

        async with asyncio.TaskGroup() as group:
            for call in runnable:
                group.create_task(run(call))
    if waiting:
        return await _pause(spec, tools, waiting)
    try:
        allowance = await tools.reserve([*spec.prompt, *replay_reply(reply.parts)])
    except ParleyError as exc:
        return TurnOutcome(finish_reason=exc.error_code(), error=exc, completed=False)
    spec.max_tokens = allowance.max_tokens
    if spec.output_limit is not None:
        spec.output_limit = allowance.max_tokens
    return await _consume(spec, reply, *_round_tools(spec, first_round=False))


async def _run_call(spec: TurnSpec, tools: TurnTools, call: PlannedCall) -> None:
    """Run one call (its row is already `executing`), publish and store its result. A Stop while
    it runs cancels it: it is stored as failed, outcome unknown."""
    reply = spec.reply
    tool = call.tool
    assert tool is not None
    plan = tools.policy.plan
    if plan is not None and call.plan_step is not None:
        spec.publish(PlanStepStart(plan_id=plan.id, step_index=call.plan_step, tool_name=call.name))
    spec.publish(
        ToolUseStart(
            tool_use_id=call.call_id, tool_name=call.name, input=call.arguments, execution_id=call.execution_id
        )
    )
    started = time.monotonic()
    try:
        output = await tools.catalog.call(tool, call.arguments)
    except asyncio.CancelledError:
        text = "Stopped before it finished; whether it had an effect is unknown."
        reply.add_part(result_part(call.call_id, call.name, text, is_error=True))
        update = CallUpdate(
            execution_id=call.execution_id,
            changes={
                "status": "failed",
                "is_error": True,
                "error_message": text,
                "duration_ms": int((time.monotonic() - started) * 1000),
                "completed_at": spec.clock(),
            },
            tool_name=call.name,
        )
        try:
            await asyncio.shield(tools.store_call(update))
        except Exception:
            log.exception("storing a stopped tool call failed for session %s", spec.session_id)
        spec.publish(ToolResult(tool_use_id=call.call_id, tool_name=call.name, output=text, is_error=True))
        raise
    reply.add_part(
        result_part(call.call_id, call.name, output.text, is_error=output.is_error, truncated=output.truncated)
    )
    plan_done = plan is not None and call.plan_step is not None and call.plan_step + 1 >= len(plan.steps)
    if plan is not None and call.plan_step is not None:
        # The running plan moves on in memory too: its next step now runs without asking.
        current = tools.policy.plan
        step = max(call.plan_step + 1, current.current_step if current is not None else 0)
        tools.policy = replace(tools.policy, plan=replace(plan, current_step=step))
    update = CallUpdate(
        execution_id=call.execution_id,
        changes={
            "status": "failed" if output.is_error else "completed",
            "output": output.text,
            "is_error": output.is_error,
            "truncated": output.truncated,
            "error_message": output.text[:1000] if output.is_error else None,
            "duration_ms": output.duration_ms,
            "completed_at": spec.clock(),
        },
        tool_name=call.name,
        plan_id=plan.id if plan is not None and call.plan_step is not None else None,
        plan_step=call.plan_step + 1 if call.plan_step is not None else None,
        plan_done=plan_done,
    )
    try:
        await asyncio.shield(tools.store_call(update))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("storing the result of a tool call failed for session %s", spec.session_id)
    spec.publish(
        ToolResult(
            tool_use_id=call.call_id,
            tool_name=call.name,
            output=output.text,
            is_error=output.is_error,
            truncated=output.truncated,
        )
    )
    if plan is not None and call.plan_step is not None:
        spec.publish(
            PlanStepComplete(plan_id=plan.id, step_index=call.plan_step, tool_name=call.name, is_error=output.is_error)
        )
        if plan_done:
            spec.publish(PlanComplete(plan_id=plan.id, status="completed"))


async def _pause(spec: TurnSpec, tools: TurnTools, waiting: Sequence[PlannedCall]) -> TurnOutcome:
    """Store the calls that wait (and any plan they propose) with the reply, release the lease,
    and end the stream: approval_required per call, message_end, done."""
    reply = spec.reply
    now = spec.clock()
    expires_at = now + tools.approval_ttl
    for call in waiting:
        if call.disposition == "propose":
            call.plan_id = tools.new_id()
    rows = [_execution_row(spec, call, reply.tool_rounds, now, expires_at=expires_at) for call in waiting]
    plans = [
        {
            "id": call.plan_id,
            "execution_id": call.execution_id,
            "title": str(call.arguments.get("title") or "")[:255],
            "steps": [{**step, "status": "pending"} for step in call.arguments.get("steps") or []],
            "status": "pending",
            "current_step": 0,
            "expires_at": expires_at,
            "created_at": now,
        }
        for call in waiting
        if call.disposition == "propose"
    ]
    record = _record(
        spec, reply, finish_reason=AWAITING_APPROVAL, count_turn=False, executions=rows, plans=plans, awaiting=True
    )
    error = await _persist(spec, record)
    if error is not None:
        return TurnOutcome(finish_reason=error.error_code(), error=error, completed=False)
    shown = expires_at.isoformat().replace("+00:00", "Z")
    for call in waiting:
        if call.disposition == "propose":
            spec.publish(
                PlanApprovalRequired(
                    plan_id=call.plan_id or "",
                    execution_id=call.execution_id,
                    tool_use_id=call.call_id,
                    title=str(call.arguments.get("title") or ""),
                    steps=[{**step, "status": "pending"} for step in call.arguments.get("steps") or []],
                    expires_at=shown,
                )
            )
        else:
            spec.publish(
                ApprovalRequired(
                    execution_id=call.execution_id,
                    tool_use_id=call.call_id,
                    tool_name=call.name,
                    input=call.arguments,
                    description=tool_calls.description_of(call.tool),
                    expires_at=shown,
                )
            )
    spec.observe(PAUSED)
    spec.publish(_message_end(reply, spec))
    spec.publish(Done())
    return PAUSED


def _execution_row(
    spec: TurnSpec, call: PlannedCall, round_number: int, now: datetime, *, expires_at: datetime | None = None
) -> dict[str, Any]:
    """The `ai_tool_executions` row of a call as it is first stored."""
    status = {"refused": "refused", "run": "executing", "ask": "pending", "propose": "pending"}[call.disposition]
    tool = call.tool
    return {
        "id": call.execution_id,
        "message_id": spec.message_id,
        "round": round_number,
        "call_index": call.index,
        "tool_use_id": call.call_id,
        "tool_name": call.name,
        "server": tool.server if tool is not None else None,
        "input": call.arguments,
        "input_hash": call.input_hash,
        "description": tool_calls.description_of(tool),
        "status": status,
        "requires_approval": status == "pending",
        "expires_at": expires_at,
        "is_error": status == "refused",
        "truncated": False,
        "error_message": call.refusal,
        "output": call.refusal,
        "plan_id": call.plan_id,
        "plan_step": call.plan_step,
        "created_at": now,
        "started_at": now if status == "executing" else None,
        "completed_at": now if status == "refused" else None,
    }


def describe_parts(text: str, reasoning: str) -> list[dict[str, Any]]:
    """The stored parts of one model round: reasoning apart from the answer."""
    parts: list[dict[str, Any]] = []
    if reasoning:
        parts.append({"type": "reasoning", "text": reasoning})
    if text:
        parts.append({"type": "text", "text": text})
    return parts
