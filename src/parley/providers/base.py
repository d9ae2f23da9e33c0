"""The provider-neutral seam: chat messages in, provider events out.

A provider translates between these types and one wire format; it knows nothing of sessions,
storage or billing (may import only `parley.errors` and the standard library, plus its HTTP
client). Messages are lists of parts, so a tool call and its result are parts like text.

Tools: the caller passes `ToolSpec`s and a `ToolChoice`; the provider streams `ToolCallStarted`
when a call's name is known and one `ToolCallReady` per call once its arguments are complete
(as the model wrote them: JSON text, parsed and validated by the caller), before `Finished`.
History replays calls as assistant `ToolCallPart`s and results as a `tool` message of
`ToolResultPart`s, in the order the calls were made; each provider writes them its own way.

Cancellation is plain asyncio cancellation: cancelling the task that iterates `stream()` (or
closing the iterator) must close the upstream HTTP response so the server stops generating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

# --- message parts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TextPart:
    """Plain text a user wrote or the model answered."""

    type: Literal["text"] = "text"
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningPart:
    """The model's reasoning; stored for display, never sent back to a model."""

    type: Literal["reasoning"] = "reasoning"
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallPart:
    """A tool call the model made, in an assistant message: `arguments` is a JSON object."""

    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResultPart:
    """What a tool call gave back, in a `tool` message: text for the model, or an error's text."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    output: str = ""
    is_error: bool = False


Part = TextPart | ReasoningPart | ToolCallPart | ToolResultPart
# `tool` messages hold only ToolResultParts, one per call of the assistant message before them.
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    """One message of the conversation sent to a provider."""

    role: Role
    parts: tuple[Part, ...]

    @classmethod
    def text(cls, role: Role, text: str) -> ChatMessage:
        return cls(role=role, parts=(TextPart(text=text),))

    @property
    def plain_text(self) -> str:
        """The concatenated text parts (reasoning and tool parts excluded)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def sent_text(self) -> str:
        """Everything of the message a provider sends: text, calls' arguments, results."""
        if len(self.parts) == 1 and type(self.parts[0]) is TextPart:
            return self.parts[0].text
        pieces: list[str] = []
        for part in self.parts:
            if isinstance(part, TextPart):
                pieces.append(part.text)
            elif isinstance(part, ToolCallPart):
                pieces.append(part.name + str(part.arguments))
            elif isinstance(part, ToolResultPart):
                pieces.append(part.output)
        return "".join(pieces)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """A tool offered to the model: its name (within every provider's rules: `[A-Za-z0-9_-]{1,64}`),
    what it does, and the JSON Schema of its arguments (an object schema)."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ForcedTool:
    """Make the model call this tool now (a person's explicit choice, like a slash command)."""

    name: str


# auto: the model may call any offered tool; none: it must answer in text.
ToolChoice = Literal["auto", "none"] | ForcedTool


def estimate_tokens(chars: int) -> int:
    """A rough token count for text a server did not count (about four characters a token)."""
    return -(-chars // 4) if chars > 0 else 0


# --- events a provider yields --------------------------------------------------------------------


@dataclass(slots=True)
class TextDelta:
    """Pieces of the answer from one network read, one per upstream chunk (each counts as one).

    One event per run of pieces, not one per token: a read of the usual stream carries many.
    """

    type: ClassVar[Literal["text_delta"]] = "text_delta"
    texts: list[str]


@dataclass(slots=True)
class ReasoningDelta:
    """Pieces of the model's reasoning from one network read (as TextDelta)."""

    type: ClassVar[Literal["reasoning_delta"]] = "reasoning_delta"
    texts: list[str]


def add_text(out: list[ProviderEvent], text: str) -> None:
    """Append a piece of the answer to `out`, in the run it continues if the last event is one."""
    last = out[-1] if out else None
    if type(last) is TextDelta:
        last.texts.append(text)
    else:
        out.append(TextDelta([text]))


def add_reasoning(out: list[ProviderEvent], text: str) -> None:
    """Append a piece of reasoning to `out` (as `add_text`)."""
    last = out[-1] if out else None
    if type(last) is ReasoningDelta:
        last.texts.append(text)
    else:
        out.append(ReasoningDelta([text]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts for the whole request, as the server reports them (cumulative, not a delta).

    `input_tokens` counts uncached prompt tokens only; the cache buckets are disjoint from it.
    """

    type: Literal["usage"] = "usage"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False  # True when the server sent no usage and the provider counted itself


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallStarted:
    """The model began a tool call: its id and name are known, its arguments still streaming."""

    type: Literal["tool_call_started"] = "tool_call_started"
    call_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallReady:
    """A complete tool call; `arguments` is the JSON text the model wrote, not yet parsed."""

    type: Literal["tool_call_ready"] = "tool_call_ready"
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """The server ended the reply; `reason` is normalised: stop, length, tool_calls, or the raw
    value. A reply with calls may still end in `stop` (vLLM, for a forced call): the calls decide."""

    type: Literal["finished"] = "finished"
    reason: str


ProviderEvent = TextDelta | ReasoningDelta | ToolCallStarted | ToolCallReady | Usage | Finished


@dataclass(frozen=True, slots=True)
class ContextWindow:
    """How many tokens a model sees at once (prompt and reply together), and who said so."""

    tokens: int
    source: str


class Provider(Protocol):
    """A configured model endpoint.

    `stream` opens one upstream request and yields its events until the reply ends, in batches:
    one per network read, never empty, so a consumer pays one async step per read rather than
    per token. It raises `parley.errors.ProviderError` for every failure, including a stream that
    ends without a `Finished` event (kind `truncated`); the events of a read that precede an
    in-stream error are yielded first. Retries happen inside, only before anything was yielded.
    """

    name: str

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str,
        max_tokens: int | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[Sequence[ProviderEvent]]: ...

    async def context_window(self, model: str) -> ContextWindow | None:
        """What the model server says the model's window is (best effort, a few seconds at most),
        or None when it does not say."""
        ...

    async def count_tokens(self, model: str, text: str) -> int | None:
        """How many tokens the model server's tokenizer makes of `text` (best effort, a few seconds
        at most), or None when it offers no tokenizer."""
        ...

    async def probe(self) -> str | None:
        """One cheap request to the model server, for readiness: None when it answered, else why
        it is not usable (unreachable, credentials refused, failing). Never raises."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...
