"""start_turn: the stream starts first, a read's events are kept and published in order, and a Stop
before the stream ever ran ends the turn without a model call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from parley.billing.cost import Prices
from parley.chat.events import ContentDelta, Done, MessageEnd, ReasoningDelta, StreamEvent
from parley.chat.turns import TurnOutcome, TurnRecord, TurnSpec, start_turn
from parley.providers.base import ChatMessage, ProviderEvent
from parley.providers.base import ReasoningDelta as Thought
from parley.providers.base import TextDelta as Text
from tests.support.scripted_provider import Reply, ScriptedProvider


class Recorder:
    def __init__(self) -> None:
        self.first_event = asyncio.Event()
        self.events: list[StreamEvent] = []
        self.persisted: list[TurnRecord] = []
        self.stop: str | None = None
        self.stream: asyncio.Task[TurnOutcome] | None = None

    def publish(self, event: StreamEvent) -> None:
        # Deltas spelled out one piece each: how reads group the pieces varies.
        if isinstance(event, ContentDelta | ReasoningDelta):
            self.events += [type(event)([text]) for text in event.texts]
            self.first_event.set()
        else:
            self.events.append(event)

    async def persist(self, record: TurnRecord) -> None:
        self.persisted.append(record)

    def spec(self, provider: ScriptedProvider) -> TurnSpec:
        def on_stream_task(task: asyncio.Task[TurnOutcome]) -> None:
            self.stream = task

        return TurnSpec(
            session_id="s",
            message_id="m",
            prompt=[ChatMessage.text("system", "Be brief."), ChatMessage.text("user", "hi")],
            model="m",
            max_tokens=None,
            output_limit=None,
            turn_timeout=5,
            provider=provider,  # type: ignore[arg-type]
            prices=Prices(),
            publish=self.publish,
            persist=self.persist,
            clock=lambda: datetime.now(UTC),
            stop_reason=lambda: self.stop,
            on_stream_task=on_stream_task,
        )


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def test_a_turn_streams_and_is_stored() -> None:
    recorder, provider = Recorder(), ScriptedProvider(Reply(tokens=["a", "b"], per_read=2))
    await start_turn(recorder.spec(provider))
    assert recorder.events[:2] == [ContentDelta(["a"]), ContentDelta(["b"])]
    assert isinstance(recorder.events[2], MessageEnd)
    assert recorder.events[3] == Done()
    (record,) = recorder.persisted
    assert record is not None
    assert (record.text, record.count_turn) == ("ab", True)


async def test_a_stop_before_the_stream_ran_calls_no_model_and_does_not_count() -> None:
    recorder, provider = Recorder(), ScriptedProvider()
    turn = start_turn(recorder.spec(provider))
    assert recorder.stream is not None
    recorder.stop = "interrupt"
    recorder.stream.cancel()  # before the loop ever ran it
    await turn
    assert provider.calls == []
    (record,) = recorder.persisted  # the lease is released; an empty reply is stored, not counted
    assert (record.text, record.finish_reason, record.count_turn, record.tokens.is_zero) == (
        "",
        "interrupted",
        False,
        True,
    )
    assert recorder.events == [Done()]


async def test_a_stop_once_streaming_keeps_what_arrived() -> None:
    recorder, provider = Recorder(), ScriptedProvider(Reply(tokens=["a", "b", "c"], delay=0.2))
    turn = start_turn(recorder.spec(provider))
    await recorder.first_event.wait()
    recorder.stop = "interrupt"
    assert recorder.stream is not None
    recorder.stream.cancel()
    await turn
    (record,) = recorder.persisted
    assert record is not None
    assert (record.text, record.finish_reason) == ("a", "interrupted")
    assert types(recorder.events) == ["content_delta", "done"]


class OneRead:
    """A provider whose whole reply arrives in one network read."""

    def __init__(self, *events: ProviderEvent) -> None:
        self.events = events

    async def stream(
        self, messages: Any, *, model: str, max_tokens: int | None = None, **tools: Any
    ) -> AsyncIterator[Any]:
        yield self.events


async def cut_at_five(*read: ProviderEvent) -> Recorder:
    """A turn whose one read is `read`, under an output limit of 5 pieces."""
    recorder = Recorder()
    spec = recorder.spec(OneRead(*read))  # type: ignore[arg-type]
    spec.output_limit = 5
    await start_turn(spec)
    assert types(recorder.events[5:]) == ["error", "done"]
    return recorder


def stored(recorder: Recorder) -> tuple[str, str, str]:
    (record,) = recorder.persisted
    assert record is not None
    reasoning = "".join(p["text"] for p in record.parts if p["type"] == "reasoning")
    return reasoning, record.text, record.finish_reason or ""


async def test_answer_and_reasoning_in_one_read_keep_their_order_and_the_limit_holds() -> None:
    # Each piece its own event: as a translator that did not group them would hand them over.
    recorder = await cut_at_five(Thought(["r1"]), Text(["a"]), Text(["b"]), Thought(["r2"]), Text(["c"]), Text(["d"]))
    shown = [ReasoningDelta(["r1"]), ContentDelta(["a"]), ContentDelta(["b"])]
    assert recorder.events[:5] == [*shown, ReasoningDelta(["r2"]), ContentDelta(["c"])]
    assert stored(recorder) == ("r1r2", "abc", "budget_exhausted")


async def test_a_run_of_pieces_counts_each_piece_and_is_cut_at_the_limit() -> None:
    recorder = await cut_at_five(Thought(["r"]), Text(["a", "b"]), Text(["c"]), Text(["d", "e", "f"]))
    assert recorder.events[:5] == [ReasoningDelta(["r"]), *(ContentDelta([t]) for t in "abcd")]
    assert stored(recorder) == ("r", "abcd", "budget_exhausted")
