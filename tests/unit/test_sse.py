"""The SSE decoder against the WHATWG parsing rules, with chunks split anywhere."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.providers.sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.finish())
    return events


def data_of(*chunks: bytes) -> list[str]:
    return [e.data for e in decode(*chunks)]


def every_split(raw: bytes) -> list[list[ServerSentEvent]]:
    return [decode(raw[:i], raw[i:]) for i in range(len(raw) + 1)]


def test_basic_events() -> None:
    assert decode(b"data: one\n\ndata: two\n\n") == [
        ServerSentEvent(data="one"),
        ServerSentEvent(data="two"),
    ]


def test_lf_cr_and_crlf_line_endings_are_equivalent() -> None:
    body = "event: e\nid: 7\ndata: a\ndata: b\n\n"
    expected = decode(body.encode())
    assert expected == [ServerSentEvent(event="e", data="a\nb", id="7")]
    assert decode(body.replace("\n", "\r").encode()) == expected
    assert decode(body.replace("\n", "\r\n").encode()) == expected


def test_mixed_line_endings_in_one_stream() -> None:
    assert data_of(b"data: a\r\n\rdata: b\n\r\ndata: c\r\r") == ["a", "b", "c"]


def test_comments_are_ignored() -> None:
    assert data_of(b": ping - 2026-11-25 19:00:00\r\n\r\ndata: x\r\n:again\r\n\r\n") == ["x"]


def test_multi_line_data_is_joined_with_newline() -> None:
    assert data_of(b"data: a\ndata:\ndata: c\n\n") == ["a\n\nc"]


def test_only_one_leading_space_is_removed() -> None:
    assert data_of(b"data:  two spaces\n\ndata:none\n\n") == [" two spaces", "none"]


def test_field_without_colon_has_empty_value() -> None:
    assert data_of(b"data\n\n") == [""]


def test_block_without_data_is_not_dispatched() -> None:
    events = decode(b"event: ping\n\nretry: 10\n\ndata: x\n\n")
    assert events == [ServerSentEvent(data="x")]  # the event type does not leak into the next block


def test_id_persists_and_nul_id_is_ignored() -> None:
    events = decode(b"id: 1\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


def test_retry_only_accepts_digits() -> None:
    events = decode(b"retry: 1500\ndata: a\n\nretry: 1.5\ndata: b\n\n")
    assert [e.retry for e in events] == [1500, None]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: a\n\n") == [ServerSentEvent(data="a")]


def test_final_event_without_blank_line_is_dispatched_at_finish() -> None:
    assert data_of(b"data: a\n\ndata: last\n") == ["a", "last"]
    assert data_of(b"data: a\n\ndata: last") == ["a", "last"]
    assert data_of(b"data: last\r") == ["last"]


def test_finish_with_nothing_pending_returns_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [ServerSentEvent(data="a")]
    assert decoder.finish() == []


def test_cr_at_chunk_end_followed_by_lf_is_one_line_ending() -> None:
    # A split CRLF must not become CR + LF (two line endings), which would dispatch "a" alone.
    assert data_of(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]


def test_cr_at_chunk_end_followed_by_empty_chunk_then_lf() -> None:
    assert data_of(b"data: a\r", b"", b"\ndata: b\r\n\r\n") == ["a\nb"]


def test_lone_cr_at_chunk_end_then_cr() -> None:
    assert data_of(b"data: a\r", b"\rdata: b\r\r") == ["a", "b"]


def test_utf8_split_inside_a_character() -> None:
    raw = "data: Grüße 東京 🌸\n\n".encode()
    for events in every_split(raw):
        assert [e.data for e in events] == ["Grüße 東京 🌸"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert data_of(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_bom_is_stripped_even_when_split() -> None:
    raw = b"\xef\xbb\xbfdata: a\n\n"
    for events in every_split(raw):
        assert [e.data for e in events] == ["a"]
    assert data_of(b"\xef", b"\xbb", b"\xbf", b"data: a\n\n") == ["a"]


def test_bom_only_at_stream_start() -> None:
    assert data_of(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == ["a"]  # "\ufeffdata" is an unknown field


def test_every_two_piece_split_of_a_mixed_stream_is_identical() -> None:
    raw = b": c\r\nevent: x\r\nid: 5\r\ndata: 1\r\ndata: 2\r\n\r\ndata: 3\rdata: 4\r\r\ndata: 5\n\ndata: 6"
    expected = decode(raw)
    assert [e.data for e in expected] == ["1\n2", "3\n4", "5", "6"]
    for events in every_split(raw):
        assert events == expected


# --- property: any event list, serialised with any line endings, split anywhere ------------------

_text = st.text(st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=12)
_event = st.tuples(
    st.sampled_from(["", "update", "error"]),
    st.lists(_text, min_size=1, max_size=3),
)


def _serialise(events: list[tuple[str, list[str]]], newline: bytes, comments: bool) -> bytes:
    out = b""
    for event, lines in events:
        if comments:
            out += b": keep-alive" + newline
        if event:
            out += b"event: " + event.encode() + newline
        for line in lines:
            out += b"data: " + line.encode() + newline
        out += newline
    return out


def _chunks(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=6),
    newline=st.sampled_from([b"\n", b"\r", b"\r\n"]),
    comments=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_property_any_split_gives_the_same_events(
    events: list[tuple[str, list[str]]], newline: bytes, comments: bool, cuts: list[int]
) -> None:
    raw = _serialise(events, newline, comments)
    decoded = decode(*_chunks(raw, cuts))
    assert [(e.event, e.data) for e in decoded] == [(event or "message", "\n".join(lines)) for event, lines in events]


_lone_or_not = st.one_of(
    st.tuples(st.just(""), st.lists(_text, min_size=1, max_size=1)),  # the usual: one data line
    _event,
)


@settings(max_examples=400, deadline=None)
@given(
    events=st.lists(_lone_or_not, max_size=8),
    newline=st.sampled_from([b"\n", b"\n", b"\r\n"]),
    comments=st.booleans(),
    bom=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_property_streams_of_mostly_lone_data_lines_decode_alike_at_any_split(
    events: list[tuple[str, list[str]]], newline: bytes, comments: bool, bom: bool, cuts: list[int]
) -> None:
    """Such chunks take the one-step path; mixed with other lines, the two paths must agree."""
    raw = (b"\xef\xbb\xbf" if bom else b"") + _serialise(events, newline, comments)
    decoded = decode(*_chunks(raw, cuts))
    assert [(e.event, e.data) for e in decoded] == [(event or "message", "\n".join(lines)) for event, lines in events]


def test_lone_data_lines_then_the_rest_of_the_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: [DONE]\n\ndata: par') == [
        ServerSentEvent(data='{"a":1}'),
        ServerSentEvent(data="[DONE]"),
    ]
    assert decoder.feed(b"tial\n\n") == [ServerSentEvent(data="partial")]
    assert decoder.feed(b"data: no end yet\n") == []
    assert decoder.feed(b"id: 7\nevent: x\n\ndata: y\n\n") == [
        ServerSentEvent(event="x", data="no end yet", id="7"),
        ServerSentEvent(data="y", id="7"),
    ]
    assert decoder.feed(b"data: z\n\n") == [ServerSentEvent(data="z", id="7")]  # the id persists
    for other in (b"event: x\ndata: y\n\n", b": ping\n\n", b"data: a\ndata: b\n\n", b"data: a\r\n\r\n", b"id: 1\n\n"):
        fresh = SSEDecoder()
        assert fresh.feed(other) + fresh.finish() == decode(other[:1], other[1:]), other
