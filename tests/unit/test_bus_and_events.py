"""Event encoding and the in-memory channel: ids, replay, end of stream."""

from __future__ import annotations

import json

from parley.bus.memory import END, SessionChannel, parse_event_id
from parley.chat.events import ContentDelta, Done, MessageEnd, ReasoningDelta, TitleUpdated, TurnError, encode


def frame_fields(frame: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in frame.decode().strip("\n").split("\n"):
        name, _, value = line.partition(": ")
        out[name] = value
    return out


def test_frames_carry_id_event_and_whole_json_with_type() -> None:
    [frame] = encode(ContentDelta(['a "quoted"\nline']), 3, 7)
    fields = frame_fields(frame)
    assert fields["id"] == "3-7"
    assert fields["event"] == "content_delta"
    assert json.loads(fields["data"]) == {"type": "content_delta", "delta": 'a "quoted"\nline'}


def test_message_end_uses_camel_case_and_decimal_strings() -> None:
    data = json.loads(
        frame_fields(encode(MessageEnd(input_tokens=5, output_tokens=7, cost_usd="0.0105"), 1, 1)[0])["data"]
    )
    assert data == {
        "type": "message_end",
        "inputTokens": 5,
        "outputTokens": 7,
        "cacheReadTokens": 0,
        "cacheWriteTokens": 0,
        "costUsd": "0.0105",
        "usageEstimated": False,
    }
    assert json.loads(frame_fields(encode(TurnError(code="x", message="y"), 1, 2)[0])["data"]) == {
        "type": "error",
        "code": "x",
        "message": "y",
    }


def publish(channel: SessionChannel, event: object, final: bool = False) -> None:
    channel.publish(event, encode, final=final)


def test_subscribers_get_frames_then_end_after_done() -> None:
    ch = SessionChannel("s")
    ch.begin_turn(1)
    sub = ch.subscribe()
    publish(ch, TitleUpdated(title="t"))
    publish(ch, Done(), final=True)
    frames = sub.drain()
    assert [frame_fields(f)["id"] for f in frames[:-1]] == ["1-1", "1-2"]
    assert frames[-1] == END
    publish(ch, TitleUpdated(title="after the end"))
    assert sub.drain() == []  # the stream ended: nothing more reaches it


def test_replay_after_an_id_and_of_a_finished_turn() -> None:
    ch = SessionChannel("s")
    ch.begin_turn(5)
    for i in range(3):
        publish(ch, ContentDelta([str(i)]))
    late = ch.subscribe(replay_after=(5, 1))
    assert [frame_fields(f)["id"] for f in late.drain()] == ["5-2", "5-3"]
    publish(ch, Done(), final=True)
    after_end = ch.subscribe(replay_after=(5, 3))
    frames = after_end.drain()
    assert frame_fields(frames[0])["event"] == "done"
    assert frames[-1] == END
    assert ch.has_frames_after((5, 3))
    assert not ch.has_frames_after((5, 4))


def test_closing_ends_streams_without_done() -> None:
    ch = SessionChannel("s")
    ch.begin_turn(1)
    sub = ch.subscribe()
    ch.close()
    assert sub.drain() == [END]
    assert ch.subscribe().drain() == [END]


def test_event_ids_parse_or_are_ignored() -> None:
    assert parse_event_id("12-3") == (12, 3)
    assert parse_event_id("12.3") == (12, 3)  # the form earlier versions sent
    assert parse_event_id(None) is None
    assert parse_event_id("abc") is None
    assert parse_event_id("1.x") is None


def test_a_read_of_deltas_is_framed_and_numbered_as_one_by_one() -> None:
    texts = ["a", '"b"\n', "ü", ""]
    one_by_one = SessionChannel("s")
    one_by_one.begin_turn(3)
    publish(one_by_one, ContentDelta(["first"]))
    for text in texts:
        publish(one_by_one, ContentDelta([text]))
    batched = SessionChannel("s")
    batched.begin_turn(3)
    publish(batched, ContentDelta(["first"]))
    live = batched.subscribe()
    publish(batched, ContentDelta(texts))
    expected = one_by_one.subscribe(replay_all=True).drain()
    assert batched.subscribe(replay_all=True).drain() == expected
    assert live.drain() == expected[1:]
    fields = [frame_fields(f) for f in encode(ReasoningDelta(texts), 3, 2)]
    assert [(f["id"], f["event"], json.loads(f["data"])) for f in fields] == [
        (f"3-{i}", "reasoning_delta", {"type": "reasoning_delta", "delta": t}) for i, t in enumerate(texts, 2)
    ]
