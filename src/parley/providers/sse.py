"""Incremental Server-Sent Events decoder (WHATWG "event stream interpretation").

Feed raw byte chunks split anywhere — inside a CRLF pair, inside a multi-byte UTF-8 character —
and get `ServerSentEvent`s back. Lines end in LF, CR or CRLF; `:` lines are comments; multi-line
`data:` is joined with "\\n"; a blank line dispatches. One deliberate departure from the spec:
`finish()` at EOF dispatches a final event that lacked its trailing blank line instead of
discarding it, because real servers end streams that way and dropping the last event loses text.

This sits on the hot path (thousands of events per second), so line splitting uses bytes methods
on whole chunks and keeps only the unterminated tail between calls; there is no per-byte loop, and
a chunk of the usual stream (lone `data:` lines) is decoded in one step.

Imports: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class ServerSentEvent:
    """One dispatched event. `id` is the stream's last event id (it persists across events).

    Not frozen: one is made per upstream token, and a frozen dataclass's __init__ costs about
    three times a plain one's.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None  # the `retry:` value given in this event's block, if any


class SSEDecoder:
    """Turns a byte stream into events; one instance per stream."""

    __slots__ = ("_bom_pending", "_data", "_event", "_last_id", "_retry", "_skip_lf", "_tail")

    def __init__(self) -> None:
        self._tail = b""  # bytes after the last line terminator seen so far
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF completes a CRLF
        self._bom_pending = True  # a UTF-8 BOM may open the stream (possibly split)
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; returns the events it completed (often none or one)."""
        if not chunk:
            return []
        lone = self._lone_data(chunk)
        if lone is not None:
            return lone
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:  # LF
                chunk = chunk[1:]
                if not chunk:
                    return []
        buf = self._tail + chunk if self._tail else chunk
        if self._bom_pending:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._tail = buf
                return []
            self._bom_pending = False
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            # A trailing CR ends its line now; remember to swallow the LF of a split CRLF.
            if buf[-1] == 0x0D:
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n")
        if end < 0:
            self._tail = buf
            return []
        self._tail = buf[end + 1 :]
        # Line terminators are ASCII and never inside a UTF-8 sequence, so complete lines
        # always hold complete characters.
        return self._lines(buf[:end].decode("utf-8", "replace").split("\n"))

    def _lone_data(self, chunk: bytes) -> list[ServerSentEvent] | None:
        """The usual stream, decoded in one step: every event `chunk` completes is a single
        `data: <payload>` line (LF only) and no field is pending. None (nothing consumed) when
        that does not hold: the line-by-line path decides."""
        if self._data or self._event or self._retry is not None or self._skip_lf:
            return None
        buf = self._tail + chunk if self._tail else chunk
        if self._bom_pending:
            if len(buf) < 3:
                return None
            if buf.startswith(_BOM):
                buf = buf[3:]
        end = buf.rfind(b"\n\n")
        if end < 0 or b"\r" in buf or b"\n" in buf[end + 2 :]:  # the tail must be one unfinished line
            return None
        blocks = buf[:end].decode("utf-8", "replace").split("\n\n")
        for block in blocks:
            if block[:6] != "data: " or "\n" in block:
                return None
        self._bom_pending = False
        self._tail = buf[end + 2 :]
        last_id = self._last_id
        return [ServerSentEvent("message", block[6:], last_id) for block in blocks]

    def finish(self) -> list[ServerSentEvent]:
        """End of stream: process an unterminated last line and dispatch a pending event."""
        tail, self._tail = self._tail, b""
        self._skip_lf = False
        if self._bom_pending:
            self._bom_pending = False
            if tail.startswith(_BOM):
                tail = tail[3:]
        events = self._lines([tail.decode("utf-8", "replace")]) if tail else []
        if self._data:
            events.append(self._dispatch())
        self._event = ""
        self._retry = None
        return events

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if line[:6] == "data: ":  # by far the most common line: one per token
                data.append(line[6:])
                continue
            if not line:
                if data:
                    events.append(self._dispatch())
                    data = self._data
                else:
                    # No data: nothing is dispatched, but the block's event type is reset.
                    self._event = ""
                    self._retry = None
                continue
            if line[0] == ":":
                continue
            name, _, value = line.partition(":")
            if value and value[0] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\x00" not in value:
                self._last_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self._retry = int(value)
            # Unknown field names are ignored, as the spec requires.
        return events

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        event = ServerSentEvent(
            self._event or "message",
            data[0] if len(data) == 1 else "\n".join(data),
            self._last_id,
            self._retry,
        )
        self._data = []
        self._event = ""
        self._retry = None
        return event
