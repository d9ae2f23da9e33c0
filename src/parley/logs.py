"""Log lines: text for a terminal, or one JSON object per line for a collector (`PARLEY_LOG_FORMAT`).

Every line is stamped with the request and the turn it was written for, read from the context
(`parley.context`) by a filter on the handler: a request's lines and the lines of the turn it
started carry the request's id, a turn's lines its organization, session and turn (the reply's
message id). uvicorn's own loggers propagate to the same handler (`server.py` gives uvicorn no
logging configuration of its own), so a JSON log holds nothing but JSON lines.

Imports: standard library, orjson, parley.context.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal

import orjson

from parley.context import current_request, current_turn

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Adds `request_id`, `org_id`, `session_id` and `turn_id` (None when unknown) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = current_request()
        turn = current_turn()
        record.request_id = request.request_id if request is not None else None
        record.org_id = turn.org_id if turn is not None else None
        record.session_id = turn.session_id if turn is not None else None
        record.turn_id = turn.turn_id if turn is not None else None
        return True


_CONTEXT_FIELDS = (("request", "request_id"), ("org", "org_id"), ("session", "session_id"), ("turn", "turn_id"))


class TextFormatter(logging.Formatter):
    """The usual line, then the context it has: `[request=… session=… turn=…]`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={value}" for name, attribute in _CONTEXT_FIELDS if (value := getattr(record, attribute, None))
        )
        if not context:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{first} [{context}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, org, session, turn
    (and `exception`, the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, object] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "org": getattr(record, "org_id", None),
            "session": getattr(record, "session_id", None),
            "turn": getattr(record, "turn_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["exception"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def handler(fmt: LogFormat, stream: object = None) -> logging.Handler:
    """A stream handler (stderr by default) in `fmt`, with the context filter."""
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)  # type: ignore[arg-type]
    out.addFilter(ContextFilter())
    out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    return out


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """The root logger writes to stderr in `fmt`, at `level`; any earlier handler is replaced."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(level.upper())
