"""What `parley chat` draws: replies as Markdown, tool calls and results, approval cards, footers.

A reply is drawn as it streams. Its Markdown is cut into top-level blocks (paragraphs, lists, code
blocks...); a block is complete once the next one has begun, and is then printed once, rendered,
wrapped at word boundaries. The block still growing is redrawn in place below them (rich `Live`,
cropped to its last screenfuls' worth), so the screen keeps up token by token and never holds a
half-drawn copy of anything. Where the output is not a terminal, each block is printed when it
is complete.

A tool call takes a line; its result the first lines of its output, marked when it failed or was
cut. An approval card shows the tool's description and its arguments as indented JSON.

May import: the standard library and rich.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.json import JSON
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.text import Text

AI_PREFIX = "ai> "
INDENT = "    "
OUTPUT_LINES = 4  # of a tool's result shown under its call
INPUT_CHARS = 100  # of a tool call's arguments shown on its line
_LINE_END = re.compile(r"\r\n?|\n")  # how markdown-it splits lines, so its line numbers are ours


def make_console(file: IO[str] | None = None, width: int | None = None) -> Console:
    """The client's console (on stdout unless `file`): model and tool text is shown as written,
    never read as markup or emoji."""
    return Console(file=file, width=width, markup=False, highlight=False, emoji=False)


# -- Markdown, block by block -------------------------------------------------------------------


def split_finished(text: str) -> tuple[str, str]:
    """(the top-level Markdown blocks of `text` that are complete, the rest): a block is complete
    when another one has begun after it; the last one may still grow."""
    starts = [
        token.map[0]
        for token in Markdown(text).parsed
        if token.level == 0 and token.nesting >= 0 and token.map is not None
    ]
    if len(starts) < 2:
        return "", text
    offset = 0
    for match, _ in zip(_LINE_END.finditer(text), range(starts[-1]), strict=False):
        offset = match.end()
    return text[:offset], text[offset:]


def markdown(text: str, *, style: str = "") -> Markdown:
    # Links as "text (url)": a terminal that does not follow OSC 8 links would hide the address.
    return Markdown(text, hyperlinks=False, style=style)


def reply_text(text: str, *, style: str = "", first: str = AI_PREFIX) -> Prefixed:
    """A reply's text (or reasoning, dimmed) as Markdown, under `ai> `."""
    return Prefixed(markdown(text.strip("\r\n"), style=style), first, style=style)


class Prefixed:
    """A renderable narrowed by the prefix's width, `first` before its first line, `rest` before the
    others; without the empty lines around it or the spaces that pad its lines (copied text stays clean)."""

    def __init__(self, renderable: RenderableType, first: str, rest: str = INDENT, style: str = "") -> None:
        self.renderable, self.first, self.rest, self.style = renderable, first, rest, style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(options.max_width - len(self.rest), 20)
        lines = [
            _trimmed(line) for line in console.render_lines(self.renderable, options.update_width(width), pad=False)
        ]
        while lines and not lines[-1]:
            lines.pop()
        while lines and not lines[0]:
            lines.pop(0)
        style = console.get_style(self.style)
        for index, line in enumerate(lines):
            if line:
                yield Segment(self.first if index == 0 else self.rest, style)
                yield from line
            yield Segment.line()


def _trimmed(line: list[Segment]) -> list[Segment]:
    """`line` without trailing spaces, unless they show (a code block's background)."""
    segments = list(line)
    while segments:
        last = segments[-1]
        if last.control or (last.style is not None and last.style.bgcolor is not None):
            break
        text = last.text.rstrip(" ")
        if text:
            segments[-1] = Segment(text, last.style)
            break
        segments.pop()
    return segments


class Tail:
    """The last lines of a renderable that fit the screen, less `spare` lines."""

    def __init__(self, renderable: RenderableType, spare: int = 2) -> None:
        self.renderable, self.spare = renderable, spare

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.renderable, options, pad=False)
        room = max(options.size.height - self.spare, 1)
        for line in lines[-room:]:
            yield from line
            yield Segment.line()


class ReplyText:
    """One run of a reply's text (its answer, or its reasoning) on screen while it streams.

    Everything is drawn from the thread that reads the events: a redraw from another thread could
    land between a block's rendering and its writing and leave a stale copy on screen. Redraws
    are at most `REDRAWS_PER_SECOND`; `redraw()` catches up when the stream pauses.
    """

    REDRAWS_PER_SECOND = 15

    def __init__(self, console: Console, *, style: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.style, self.clock = console, style, clock
        self.growing = ""  # the text of the block still growing (and whatever follows it)
        self.blocks = 0  # printed so far
        self.stale = False  # the growing block changed since it was last drawn
        self.drawn_at = float("-inf")
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(
                console=console,
                get_renderable=self._growing_view,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
                vertical_overflow="visible",  # Tail keeps it within the screen
            )
            self.live.start()

    def add(self, text: str) -> None:
        self.growing += text
        if "\n" in text or "\r" in text:  # a block begins only on a new line
            finished, self.growing = split_finished(self.growing)
            if finished.strip():
                self._print(finished)
        self.stale = True
        if self.clock() - self.drawn_at >= 1 / self.REDRAWS_PER_SECOND:
            self.redraw()

    def redraw(self) -> None:
        """Draw the growing block as it is now, if it changed."""
        if self.live is not None and self.stale:
            self.live.refresh()
            self.drawn_at = self.clock()
        self.stale = False

    def close(self) -> None:
        """Print what is left and stop redrawing."""
        rest, self.growing = self.growing, ""
        if self.live is not None:
            self.live.stop()
            self.live = None
        self.stale = False
        if rest.strip():
            self._print(rest)

    def _block(self, text: str) -> RenderableType:
        if self.blocks == 0:
            return reply_text(text, style=self.style)
        return Group(Text(""), reply_text(text, style=self.style, first=INDENT))

    def _print(self, text: str) -> None:
        self.console.print(self._block(text))  # above the growing block, while Live runs
        self.blocks += 1

    def _growing_view(self) -> RenderableType:
        text = self.growing
        return Tail(self._block(text)) if text.strip() else Group()


# -- tools ----------------------------------------------------------------------------------------


def short_input(arguments: Mapping[str, Any], limit: int = INPUT_CHARS) -> str:
    """A call's arguments on one line, `key=value` with JSON values, cut to `limit` characters."""
    text = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tool_call(data: Mapping[str, Any]) -> Text:
    """`tool_use_start`: the tool's name and its arguments, on one line."""
    arguments = data.get("input")
    shown = short_input(arguments) if isinstance(arguments, Mapping) else ""
    line = Text("  → ", style="cyan")
    line.append(str(data.get("toolName", "?")), style="bold cyan")
    line.append(f"({shown})", style="cyan")
    return line


def tool_result(data: Mapping[str, Any], lines: int = OUTPUT_LINES) -> RenderableType:
    """`tool_result`: the first `lines` of its output, each on one screen line, marked `error` when
    it failed and `output truncated` when parley cut it."""
    output = str(data.get("output", "")).rstrip("\n").splitlines() or [""]
    failed = bool(data.get("isError"))
    style = "red" if failed else "dim"

    def line(mark: str, text: str, text_style: str = style, mark_style: str = "") -> Text:
        shown = Text(mark, style=mark_style, no_wrap=True, overflow="ellipsis")
        shown.append(text, style=text_style)
        return shown

    mark, mark_style = ("  ✗ error: ", "bold red") if failed else ("  ← ", "green")
    shown = [line(mark, output[0], mark_style=mark_style)] + [line(INDENT, text) for text in output[1:lines]]
    if len(output) > lines:
        more = len(output) - lines
        shown.append(line(INDENT, f"… {more} more line{'s' if more > 1 else ''}", "dim"))
    if data.get("truncated"):
        shown.append(line(INDENT, "[output truncated]", "yellow"))
    return Group(*shown)  # a Group: print() would join bare Texts into one, and wrap them


def approval_card(call: Mapping[str, Any], index: int = 1, count: int = 1) -> RenderableType:
    """What a person reads before deciding a call: the tool, what it does, its arguments."""
    head = Text("? ", style="bold yellow")
    head.append(str(call.get("toolName", "?")), style="bold")
    head.append(" asks for your approval" + (f" ({index} of {count})" if count > 1 else ""))
    parts: list[RenderableType] = [head]
    description = str(call.get("description") or "").strip()
    if description:
        parts.append(Prefixed(Text(description, style="italic"), "  ", "  "))
    arguments = JSON.from_data(call.get("input") or {}, indent=2, ensure_ascii=False)
    parts.append(Prefixed(arguments, "  ", "  "))
    return Group(*parts)


def stored_reply(message: Mapping[str, Any]) -> RenderableType:
    """A stored reply (`GET /sessions/{id}`) as it was streamed: reasoning, text, tool calls, results."""
    parts = [part for part in message.get("parts") or [] if isinstance(part, Mapping)]
    if message.get("content") and not any(part.get("type") == "text" for part in parts):
        parts.append({"type": "text", "text": message["content"]})
    shown: list[RenderableType] = []
    for part in parts:
        kind = part.get("type")
        if kind in ("text", "reasoning"):
            shown.append(reply_text(str(part.get("text", "")), style="dim" if kind == "reasoning" else ""))
        elif kind == "tool_call":
            shown.append(tool_call(part))
        elif kind == "tool_result":
            shown.append(tool_result(part))
        elif kind == "context_trimmed":
            shown.append(Text(context_trimmed(part), style="dim"))
    return Group(*shown)


def context_trimmed(data: Mapping[str, Any]) -> str:
    """`context_trimmed`: what the model no longer sees of this chat."""
    dropped = data.get("droppedMessages")
    instead = ", only a summary of them" if data.get("summarized") else ""
    return f"[the model no longer sees the first {dropped} messages of this chat{instead}]"


# -- one stream -----------------------------------------------------------------------------------


def usage_footer(data: Mapping[str, Any]) -> str:
    cost = data.get("costUsd")
    estimated = " (estimated)" if data.get("usageEstimated") else ""
    price = f"${cost}" if cost is not None else "cost n/a"
    return f"[{data.get('inputTokens')} in · {data.get('outputTokens')} out tokens · {price}{estimated}]"


class Render:
    """Draws one stream (a turn, or the continuation a decision starts) as its events arrive, and
    keeps what the client acts on afterwards: the calls waiting for a decision, whether it ended."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.text: ReplyText | None = None
        self.mode: str | None = None  # "content" | "reasoning" while a text run is open
        self.approvals: list[dict[str, Any]] = []
        self.ended = False  # message_end came
        self.failed = False  # an error event came
        self.done = False  # done came: the stream is complete
        self.stopped = False  # the person asked for a stop (Ctrl-C)
        self.lost = False  # cut off, or never reached the server
        self.refused: Exception | None = None  # the request was refused (the client's ApiError)
        self.answer: dict[str, Any] | None = None  # a JSON answer instead of a stream

    @property
    def stale(self) -> bool:
        """Whether text arrived that is not drawn yet (`redraw()` draws it)."""
        return self.text is not None and self.text.stale

    def redraw(self) -> None:
        if self.text is not None:
            self.text.redraw()

    def settle(self) -> None:
        """Close the text being drawn, so what comes next starts on a line of its own."""
        if self.text is not None:
            self.text.close()
            self.text, self.mode = None, None

    def note(self, text: str, style: str = "dim") -> None:
        self.settle()
        self.console.print(text, style=style)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("content_delta", "reasoning_delta"):
            mode = kind.removesuffix("_delta")
            if mode != self.mode:
                self.settle()
                self.text = ReplyText(self.console, style="dim" if mode == "reasoning" else "")
                self.mode = mode
            assert self.text is not None
            self.text.add(str(data.get("delta", "")))
        elif kind == "tool_use_start":
            self.settle()
            self.console.print(tool_call(data))
        elif kind == "tool_result":
            self.settle()
            self.console.print(tool_result(data))
        elif kind == "approval_required":
            self.settle()
            self.approvals.append(data)
        elif kind == "plan_approval_required":
            steps = len(data.get("steps") or [])
            self.note(
                f"the model proposes a plan, {data.get('title')!r} ({steps} steps): decide plans on the web page",
                "yellow",
            )
        elif kind == "context_trimmed":
            self.note(context_trimmed(data))
        elif kind == "approval_mode_changed":
            self.note(f"[approval mode: {data.get('mode')}]")
        elif kind == "stream_gap":
            self.note("[part of this reply was lost on its way here; /history shows it whole]")
        elif kind == "message_end":
            self.ended = True
            self.note(usage_footer(data))
        elif kind == "error":
            self.failed = True
            self.note(f"error [{data.get('code', 'error')}]: {data.get('message', '')}", style="red")
        elif kind == "done":
            self.done = True
            self.settle()

    def finish(self) -> None:
        self.settle()
        if self.stopped and not self.ended and not self.failed:
            self.console.print("[stopped]", style="dim")
