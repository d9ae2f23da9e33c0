"""What `parley chat` draws (`parley.client.render`), rendered to a string as a terminal would show it."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from parley.client.render import (
    Prefixed,
    Render,
    ReplyText,
    approval_card,
    make_console,
    markdown,
    short_input,
    split_finished,
    stored_reply,
    tool_call,
    tool_result,
    usage_footer,
)


def console(width: int = 40) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return make_console(file=out, width=width), out


def shown(renderable: Any, width: int = 40) -> str:
    c, out = console(width)
    c.print(renderable)
    return out.getvalue()


# -- Markdown blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "finished"),
    [
        ("One paragraph, still growing", ""),
        ("One paragraph.\n\n", ""),  # nothing has begun after it yet
        ("First.\n\nSecond", "First.\n\n"),
        ("Intro:\n- a\n- b", "Intro:\n"),  # a list may begin right under a paragraph
        ("- a\n\n- b\n\nAfter", "- a\n\n- b\n\n"),  # a loose list is one block
        ("```\ncode\n\nmore code", ""),  # an open fence holds everything after it
        ("```\ncode\n```\nNext", "```\ncode\n```\n"),
        ("# Title\nText", "# Title\n"),
        ("A\r\n\r\nB", "A\r\n\r\n"),
        ("A\r\rB", "A\r\r"),  # a lone CR ends a line, as markdown-it reads it
    ],
)
def test_a_block_is_finished_once_the_next_one_begins(text: str, finished: str) -> None:
    assert split_finished(text) == (finished, text[len(finished) :])


def test_markdown_is_drawn_under_a_prefix_wrapped_at_words_without_trailing_spaces() -> None:
    text = "Some **bold** words and `code`, then a few more words to wrap.\n\n- one\n- two"
    lines = shown(Prefixed(markdown(text), "ai> "), width=30).splitlines()
    assert lines == [
        "ai> Some bold words and code,",
        "    then a few more words to",
        "    wrap.",
        "",
        "     • one",
        "     • two",
    ]


def test_a_block_that_starts_with_an_empty_line_loses_it() -> None:
    assert shown(Prefixed(markdown("- only"), "ai> ")) == "ai>  • only\n"


def test_a_code_block_keeps_its_background() -> None:
    out = io.StringIO()
    Console(file=out, width=30, force_terminal=True, color_system="truecolor").print(
        Prefixed(markdown("```python\nx = 1\n```"), "ai> ")
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # padding above and below, drawn in the code's background
    assert all("\x1b[48;2;" in line for line in lines)


# -- a reply as it streams ------------------------------------------------------------------------


def test_off_a_terminal_each_block_is_printed_once_complete() -> None:
    c, out = console()
    reply = ReplyText(c)
    assert reply.live is None
    for piece in ["Hello ", "there.\n", "\n", "- a\n", "- b\n"]:
        reply.add(piece)
    assert out.getvalue() == "ai> Hello there.\n"
    reply.add("\nDone.")
    assert out.getvalue() == "ai> Hello there.\n\n     • a\n     • b\n"
    reply.close()
    assert out.getvalue().endswith("     • b\n\n    Done.\n")
    reply.close()  # twice is harmless
    assert out.getvalue().endswith("Done.\n")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_the_growing_block_is_redrawn_at_most_15_times_a_second() -> None:
    out = io.StringIO()
    c = Console(file=out, width=40, height=10, force_terminal=True, color_system=None)
    clock = Clock()
    reply = ReplyText(c, clock=clock)
    reply.add("Hello")
    assert "ai> Hello" in out.getvalue()
    assert reply.stale is False
    drawn = len(out.getvalue())
    clock.now += 0.01
    reply.add(" world")
    assert len(out.getvalue()) == drawn  # too soon: drawn later
    assert reply.stale is True
    reply.redraw()
    assert "ai> Hello world" in out.getvalue()[drawn:]
    assert reply.stale is False
    drawn = len(out.getvalue())
    reply.redraw()  # nothing new: nothing drawn
    assert len(out.getvalue()) == drawn
    reply.close()
    assert out.getvalue().endswith("ai> Hello world\n")


def test_a_growing_block_taller_than_the_screen_shows_its_end() -> None:
    out = io.StringIO()
    c = Console(file=out, width=40, height=10, force_terminal=True, color_system=None)
    reply = ReplyText(c, clock=Clock())
    reply.add("```\n" + "".join(f"line {i}\n" for i in range(30)))
    last_draw = out.getvalue()
    assert "line 29" in last_draw
    assert "line 20" not in last_draw  # 8 lines fit, less the code block's bottom padding
    reply.close()
    final = out.getvalue()[len(last_draw) :]
    assert re.findall(r"line (\d+)", final) == [str(i) for i in range(30)]  # printed whole once complete


# -- tools ----------------------------------------------------------------------------------------


def test_a_calls_arguments_fit_on_one_line() -> None:
    assert short_input({"expression": "2+3*4", "limit": 3, "tags": ["a"]}) == 'expression="2+3*4", limit=3, tags=["a"]'
    assert short_input({"text": "é" * 200}, limit=20) == 'text="' + "é" * 13 + "…"
    assert short_input({}) == ""


def test_a_tool_call_and_its_result() -> None:
    assert shown(tool_call({"toolName": "demo__calculate", "input": {"expression": "2+3*4"}})) == (
        '  → demo__calculate(expression="2+3*4")\n'
    )
    assert shown(tool_call({"toolName": "x", "input": "not an object"})) == "  → x()\n"
    assert shown(tool_result({"output": "2+3*4 = 14", "isError": False})) == "  ← 2+3*4 = 14\n"


def test_a_long_result_shows_its_first_lines_each_on_one_line_and_says_what_is_left() -> None:
    output = "\n".join(["a" * 80, "two", "three", "four", "five", "six"])
    assert shown(tool_result({"output": output, "isError": False, "truncated": True})).splitlines() == [
        "  ← " + "a" * 35 + "…",
        "    two",
        "    three",
        "    four",
        "    … 2 more lines",
        "    [output truncated]",
    ]
    assert shown(tool_result({"output": "1\n2\n3\n4\n5", "isError": False})).splitlines()[-1] == "    … 1 more line"


def test_a_failed_call_is_marked() -> None:
    assert shown(tool_result({"output": "The user declined this tool call.", "isError": True}), width=60) == (
        "  ✗ error: The user declined this tool call.\n"
    )
    assert shown(tool_result({"output": "", "isError": False})) == "  ← \n"


def test_an_approval_card_shows_what_the_tool_does_and_its_arguments() -> None:
    call = {"toolName": "demo__add_note", "description": "Save a short note.", "input": {"text": "buy milk", "n": 2}}
    assert shown(approval_card(call, 2, 3), width=60).splitlines() == [
        "? demo__add_note asks for your approval (2 of 3)",
        "  Save a short note.",
        "  {",
        '    "text": "buy milk",',
        '    "n": 2',
        "  }",
    ]
    assert shown(approval_card({"toolName": "t", "input": {}})).splitlines() == ["? t asks for your approval", "  {}"]


def test_the_usage_footer() -> None:
    assert usage_footer({"inputTokens": 7, "outputTokens": 3, "costUsd": "0.0001"}) == (
        "[7 in · 3 out tokens · $0.0001]"
    )
    assert usage_footer({"inputTokens": 7, "outputTokens": 3, "costUsd": None, "usageEstimated": True}) == (
        "[7 in · 3 out tokens · cost n/a (estimated)]"
    )


def test_a_stored_reply_is_shown_as_it_was_streamed() -> None:
    message = {
        "content": "It is noon.",
        "parts": [
            {"type": "context_trimmed", "droppedMessages": 4, "summarized": True},
            {"type": "reasoning", "text": "The clock."},
            {"type": "tool_call", "toolName": "demo__now", "input": {"timezone": "UTC"}},
            {"type": "tool_result", "toolName": "demo__now", "output": "12:00 UTC", "isError": False},
            {"type": "text", "text": "It is **noon**."},
            {"type": "something new"},
        ],
    }
    assert shown(stored_reply(message), width=100).splitlines() == [
        "[the model no longer sees the first 4 messages of this chat, only a summary of them]",
        "ai> The clock.",
        '  → demo__now(timezone="UTC")',
        "  ← 12:00 UTC",
        "ai> It is noon.",
    ]
    # A reply stored without parts (or without text parts) shows its content.
    assert shown(stored_reply({"content": "Hello", "parts": None})) == "ai> Hello\n"
    assert shown(stored_reply({"content": "", "parts": []})) == ""


# -- one stream -----------------------------------------------------------------------------------


def test_a_stream_is_drawn_event_by_event_and_keeps_the_calls_to_ask() -> None:
    c, out = console(width=80)
    render = Render(c)
    asked = {"executionId": "e1", "toolName": "demo__add_note", "input": {"text": "x"}, "description": ""}
    for kind, data in [
        ("message_start", {"messageId": "m"}),
        ("context_trimmed", {"droppedMessages": 6, "summarized": False}),
        ("reasoning_delta", {"delta": "Thinking."}),
        ("content_delta", {"delta": "Let me *see*."}),
        ("tool_use_start", {"toolName": "demo__now", "input": {}}),
        ("tool_result", {"output": "It is noon.", "isError": False}),
        ("content_delta", {"delta": "Noon."}),
        ("approval_mode_changed", {"mode": "per_step"}),
        ("stream_gap", {"afterId": "1-2", "nextId": "1-5"}),
        ("plan_approval_required", {"title": "Tidy up", "steps": [{}, {}]}),
        ("approval_required", asked),
        ("error", {"code": "tool_round_limit", "message": "Too many rounds."}),
        ("message_end", {"inputTokens": 1, "outputTokens": 2, "costUsd": "0"}),
        ("title_updated", {"title": "ignored"}),
        ("done", {}),
    ]:
        render.event(kind, data)
    render.finish()
    assert out.getvalue().splitlines() == [
        "[the model no longer sees the first 6 messages of this chat]",
        "ai> Thinking.",
        "ai> Let me see.",
        "  → demo__now()",
        "  ← It is noon.",
        "ai> Noon.",
        "[approval mode: per_step]",
        "[part of this reply was lost on its way here; /history shows it whole]",
        "the model proposes a plan, 'Tidy up' (2 steps): decide plans on the web page",
        "error [tool_round_limit]: Too many rounds.",
        "[1 in · 2 out tokens · $0]",
    ]
    assert render.approvals == [asked]
    assert (render.ended, render.failed, render.done) == (True, True, True)


@pytest.mark.parametrize(("ended", "said"), [(False, "ai> Once upon\n[stopped]\n"), (True, "ai> Once upon\n")])
def test_a_stopped_reply_says_so_unless_it_had_ended(ended: bool, said: str) -> None:
    c, out = console()
    render = Render(c)
    render.event("content_delta", {"delta": "Once upon"})
    render.stopped = True
    render.ended = ended
    render.finish()
    assert out.getvalue() == said
