"""Log lines stamped from the context: a request's id, and the turn a task (or the tasks it
creates) runs for; as text or as one JSON object per line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from parley import logs
from parley.context import REQUEST, RequestInfo, bind_turn


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing to two streams: JSON lines and text."""
    as_json, as_text = io.StringIO(), io.StringIO()
    logger = logging.getLogger("parley.test_logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handlers = [logs.handler("json", as_json), logs.handler("text", as_text)]
    for handler in handlers:
        logger.addHandler(handler)
    yield logger, as_json, as_text
    for handler in handlers:
        logger.removeHandler(handler)


async def test_a_turns_tasks_log_with_the_request_and_the_turn(
    captured: tuple[logging.Logger, io.StringIO, io.StringIO],
) -> None:
    logger, as_json, as_text = captured

    async def request() -> None:
        REQUEST.set(RequestInfo("req-7", "127.0.0.1", "test"))
        logger.info("admitted")
        bind_turn("org-1", "sess-1", "turn-1")

        async def turn() -> None:
            logger.warning("model server slow")

        await asyncio.create_task(turn())  # a task inherits the context it is created in

    await asyncio.create_task(request())
    logger.info("outside")  # this task never had a request
    lines = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert [(line["message"], line["request_id"], line["session"], line["turn"]) for line in lines] == [
        ("admitted", "req-7", None, None),
        ("model server slow", "req-7", "sess-1", "turn-1"),
        ("outside", None, None, None),
    ]
    assert lines[1]["org"] == "org-1"
    assert (lines[1]["level"], lines[1]["logger"]) == ("WARNING", "parley.test_logs")
    assert lines[1]["time"].endswith("Z")
    text = as_text.getvalue().splitlines()
    assert text[0].endswith("parley.test_logs: admitted [request=req-7]")
    assert text[1].endswith("model server slow [request=req-7 org=org-1 session=sess-1 turn=turn-1]")
    assert text[2].endswith("parley.test_logs: outside")


def test_an_exception_stays_in_its_line(captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, as_json, as_text = captured
    token = REQUEST.set(RequestInfo("req-8", None, None))
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("it failed")
    finally:
        REQUEST.reset(token)
    (line,) = as_json.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "it failed"
    assert "ValueError: bad value" in entry["exception"]
    first, *traceback = as_text.getvalue().splitlines()
    assert first.endswith("it failed [request=req-8]")  # the context on the line, the traceback below
    assert traceback[-1] == "ValueError: bad value"


def test_configure_logging_replaces_the_root_handlers() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        logs.configure_logging("warning", "json")
        (handler,) = root.handlers
        assert isinstance(handler.formatter, logs.JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
