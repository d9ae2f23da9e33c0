"""What of a conversation the model is sent: the newest whole exchanges that fit its context window.

The window (tokens of prompt and reply together) is known from the settings, the model server or
the model table (`resolve_window`). Tokens are estimated from characters with a ratio: the
model's, from its server's tokenizer at start-up where it has one (`resolve_tokens_per_char`),
then calibrated per session from the prompt tokens the server reported; the estimate errs on the
side of more tokens. Before each turn, `fit` keeps the system prompt, the page context, the message and
the newest exchanges (a user message and the whole reply to it, tool calls with their results)
that leave room for a reply; older exchanges are dropped whole, in blocks of `block` exchanges so
that a provider's cached prefix stays put across turns. Nothing stored is ever deleted.

With the `summarize` strategy, what was dropped is condensed by the model into a summary stored
as a part of the reply (`{"type": "summary", "text", "covers"}`: it stands for the session's
first `covers` stored messages), sent with the system prompt, and extended on later turns.

Imports chat, billing and providers; pure but for the start-up probes (`resolve_window`,
`resolve_tokens_per_char`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from parley.billing.prices import claude_context_window
from parley.chat.history import HistoryRow, build_history, replay_reply
from parley.errors import MessageTooLongForModelError
from parley.providers.base import ChatMessage, ContextWindow, Provider, TextPart

Strategy = Literal["trim", "summarize"]

DEFAULT_TOKENS_PER_CHAR = 1 / 3  # before a server reported anything: more than most text needs
MARGIN = 1.1  # on top of a ratio a server's counts gave: the next prompts may differ
# No count brings the ratio below this (five characters a token: dense English); a server that
# under-reports its prompt cannot make parley send more than the window holds.
MIN_TOKENS_PER_CHAR = 0.2
PER_MESSAGE = 8  # chat-template tokens around each message
SAFETY = 32  # tokens left unused at the end of the window
MIN_REPLY = 64  # a reply shorter than this is not worth asking for
SUMMARY_TOKENS = 400  # the most a summary may take


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How histories are fitted: the window (None: unknown, everything is sent), the tokens per
    character (calibrated per session), the strategy, the block size, and the characters of the
    tool definitions every request carries."""

    window: int | None = None
    tokens_per_char: float = DEFAULT_TOKENS_PER_CHAR
    strategy: Strategy = "trim"
    block: int = 1
    tools_chars: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """A stored summary: it stands for the session's first `covers` stored messages."""

    text: str
    covers: int


@dataclass(slots=True)
class Exchange:
    """A user message and the whole reply to it, as a provider is sent them."""

    messages: list[ChatMessage] = field(default_factory=list)
    rows: int = 0  # stored messages it holds
    chars: int = 0


@dataclass(frozen=True, slots=True)
class Conversation:
    """The stored history, grouped for fitting, and the newest summary in it."""

    exchanges: list[Exchange]
    summary: Summary | None

    @property
    def messages(self) -> list[ChatMessage]:
        return [m for exchange in self.exchanges for m in exchange.messages]


def conversation_of(rows: Iterable[HistoryRow]) -> Conversation:
    """Group stored rows (oldest first, the current message excluded) into exchanges."""
    exchanges: list[Exchange] = []
    summary: Summary | None = None
    for role, content, parts in rows:
        if role == "user" or not exchanges:
            exchanges.append(Exchange())
        exchange = exchanges[-1]
        exchange.rows += 1
        if parts is not None and role == "assistant":
            summary = _summary_in(parts) or summary
            messages = replay_reply(parts)
        elif (role == "user" or role == "assistant") and content:
            messages = [ChatMessage(role=role, parts=(TextPart(text=content),))]  # type: ignore[arg-type]
        else:
            messages = []
        exchange.messages += messages
        exchange.chars += sum(len(m.sent_text) for m in messages)
    return Conversation(exchanges=exchanges, summary=summary)


def _summary_in(parts: Any) -> Summary | None:
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and part.get("type") == "summary" and part.get("text"):
            return Summary(text=str(part["text"]), covers=int(part.get("covers") or 0))
    return None


def estimate(chars: int, messages: int, tokens_per_char: float) -> int:
    """Tokens of `messages` messages holding `chars` characters, erring high."""
    return math.ceil(chars * tokens_per_char) + messages * PER_MESSAGE


@dataclass(frozen=True, slots=True)
class Fitted:
    """What the model is sent of the conversation, and what it no longer sees."""

    history: list[ChatMessage]
    dropped_rows: int  # stored messages, from the start, the model is not sent (a summary's included)
    max_tokens: int | None  # the reply's cap, lowered so prompt and reply fit
    summary: Summary | None  # a stored summary still in use
    to_summarize: list[ChatMessage]  # summarize strategy: what was dropped beyond that summary

    @property
    def trimmed(self) -> bool:
        return self.dropped_rows > 0


def fit(conversation: Conversation, plan: Plan, *, fixed_chars: int, max_tokens: int | None) -> Fitted:
    """The newest whole exchanges that fit the plan's window beside `fixed_chars` (system prompt,
    page context, tool definitions and the message) and a reply; raises MessageTooLongForModelError
    when even those alone leave no room for a reply. Everything, when the window is unknown."""
    exchanges = conversation.exchanges
    window, tokens_per_char, strategy, block = plan.window, plan.tokens_per_char, plan.strategy, plan.block
    if window is None:
        return Fitted(conversation.messages, 0, max_tokens, None, [])
    summary = conversation.summary if strategy == "summarize" else None
    first = _first_after(exchanges, summary.covers) if summary is not None else 0
    summary_chars = len(summary.text) if summary is not None else 0
    fixed = estimate(fixed_chars + summary_chars, 2, tokens_per_char)
    if fixed + MIN_REPLY + SAFETY > window:
        raise MessageTooLongForModelError(window)
    reply = min(max_tokens or window, max(window // 4, MIN_REPLY), window - fixed - SAFETY)
    room = window - fixed - reply - SAFETY
    costs = [estimate(e.chars, len(e.messages), tokens_per_char) for e in exchanges]
    keep_from, used = len(exchanges), 0
    for index in range(len(exchanges) - 1, first - 1, -1):
        if used + costs[index] > room:
            break
        used += costs[index]
        keep_from = index
    if keep_from > first and block > 1:  # drop up to a block boundary: the kept prefix then stays put
        keep_from = min(len(exchanges), math.ceil(keep_from / block) * block)
        used = sum(costs[keep_from:])
    kept = exchanges[keep_from:]
    history = [m for exchange in kept for m in exchange.messages]
    dropped_rows = sum(e.rows for e in exchanges[:keep_from])
    prompt = fixed + used
    cap = window - prompt - SAFETY
    lowered = cap if max_tokens is None or cap < max_tokens else max_tokens
    to_summarize = (
        [m for exchange in exchanges[first:keep_from] for m in exchange.messages] if strategy == "summarize" else []
    )
    return Fitted(history, dropped_rows, lowered, summary, to_summarize)


def fit_rows(
    rows: Sequence[HistoryRow], plan: Plan, *, fixed_chars: int, max_tokens: int | None
) -> tuple[Fitted, Conversation | None]:
    """`fit` for stored rows, and the conversation it grouped them into (None when it did not need
    to). The usual turn, whose history fits whole, is only counted, never grouped."""
    window, tokens_per_char = plan.window, plan.tokens_per_char
    if window is None or plan.strategy == "trim":
        history = build_history(rows)
        if window is None:
            return Fitted(history, 0, max_tokens, None, []), None
        prompt = estimate(fixed_chars + sum(len(m.sent_text) for m in history), len(history) + 2, tokens_per_char)
        reply = min(max_tokens or window, max(window // 4, MIN_REPLY))
        if prompt + reply + SAFETY <= window:
            cap = window - prompt - SAFETY
            return Fitted(history, 0, cap if max_tokens is None or cap < max_tokens else max_tokens, None, []), None
    conversation = conversation_of(rows)
    return fit(conversation, plan, fixed_chars=fixed_chars, max_tokens=max_tokens), conversation


def _first_after(exchanges: Sequence[Exchange], rows: int) -> int:
    """The index of the first exchange not wholly among the first `rows` stored messages."""
    seen = 0
    for index, exchange in enumerate(exchanges):
        if seen + exchange.rows > rows:
            return index
        seen += exchange.rows
    return len(exchanges)


def with_summary(system_prompt: str, summary: str | None) -> str:
    """The system prompt with a summary of what the model no longer sees."""
    if not summary:
        return system_prompt
    heading = "Earlier in this conversation (a summary; the messages themselves are not shown):"
    return f"{system_prompt}\n\n{heading}\n{summary}"


def summary_request(previous: str | None, dropped: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages that ask a model to condense `dropped` (and an earlier summary) into one."""
    lines = []
    if previous:
        lines.append(f"Summary so far:\n{previous}\n")
    for message in dropped:
        text = message.sent_text.strip()
        if text:
            lines.append(f"{message.role}: {text}")
    instructions = (
        "Condense this conversation into a short summary that keeps the facts, decisions, names and open "
        "questions a reader needs to continue it. Write plain prose, at most 150 words."
    )
    return [ChatMessage.text("system", instructions), ChatMessage.text("user", "\n".join(lines))]


async def resolve_window(
    *, configured: int | None, provider: Provider, provider_name: str, model: str
) -> ContextWindow | None:
    """The model's window: configured, else the model table (Anthropic), else what the model server
    says; None when nothing says (then nothing is trimmed until an overflow error says it)."""
    if configured is not None:
        return ContextWindow(tokens=configured, source="MCP_LLM_CONTEXT_WINDOW")
    if provider_name == "anthropic":
        tokens = claude_context_window(model)
        return ContextWindow(tokens=tokens, source="the Claude model table") if tokens else None
    return await provider.context_window(model)


# Text like a chat's (prose, a list, code, numbers), counted once at start-up by the model server's
# tokenizer. Asking it before every turn would cost a round trip on the way to the first token and
# the server's time to tokenize the whole history again (docs/performance-log.md); the reported
# prompt tokens calibrate each session for free.
SAMPLE = """Thanks! Could you explain why the build fails after the upgrade? Here is the log:

    error: cannot find module 'utils/format' (imported from src/report.ts:12)

Sure. The upgrade moved the helpers into a package of their own, so the old relative path no
longer resolves. Three steps fix it:

1. Install the package: `npm install @acme/format@2.4.1`.
2. Change the import to `import { formatDate } from "@acme/format";`.
3. Run the tests again; 148 of them should pass in about 12 seconds.

```python
def total(prices: list[float], tax: float = 0.21) -> float:
    return round(sum(prices) * (1 + tax), 2)
```

If the date shows as 2026-03-07T14:05:00Z instead of "7 March 2026", set the locale first."""


async def resolve_tokens_per_char(provider: Provider, model: str) -> float | None:
    """The model's tokens per character on chat-like text, from its server's tokenizer, with the
    margin and never under the floor; None when the server offers no tokenizer."""
    counted = await provider.count_tokens(model, SAMPLE)
    if counted is None:
        return None
    return max(counted / len(SAMPLE) * MARGIN, MIN_TOKENS_PER_CHAR)
