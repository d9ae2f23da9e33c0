"""`parley chat`: a terminal client of a parley server, over its public HTTP API only.

Reads a line (prompt_toolkit: editing, history across runs), streams the reply as Markdown
(reasoning dimmed), shows the tools it calls and what they give back, and prints a usage footer.
Calls that wait for a person are asked one after another, `[y]es / [n]o / [a]lways for this
chat` (a denial may say why), then decided one request each: the decision that settles the last
one streams the rest of the reply. Calls left waiting (the client was closed, the connection
dropped) are asked when the session is opened, and when a message finds them in its way.

`/tools` lists the session's tools; `/tool <name> <text>` has the model call one now (the name as
`client.tool_names` matches it). Ctrl-C during a reply asks the server to stop (`POST
…/interrupt`) and keeps the partial text on screen; a second Ctrl-C, while stopping or at the
prompt, quits. The last session per server URL is kept in `$XDG_STATE_HOME/parley/chat.json`
so the next run resumes it.

A stream is read on a helper thread that hands events to the main thread through a queue
(`client.api`): the main thread only ever blocks in `queue.get`, where Ctrl-C lands cleanly,
never half-way through an HTTP read.

May import: the standard library, httpx2, rich and the modules beside it (`client.api` holds the
one import from the rest of parley, the SSE decoder). This is any API client's view.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from rich.console import Console

from parley.client.api import Api, ApiError, Out
from parley.client.lines import LineReader, line_reader
from parley.client.render import Render, approval_card, make_console, stored_reply
from parley.client.tool_names import ToolNameError, find_tool

HELP = (
    "commands: /new  /sessions  /open <id>  /history  /tools  /tool <name> <text>  /usage  /help  /quit"
    "   (Ctrl-C stops a reply)"
)
CHOICES = "  [y]es / [n]o / [a]lways for this chat: "
_STOP_WAIT_SECONDS = 15.0
_REDRAW_AFTER = 0.05  # seconds without an event before text that came is drawn anyway
_MAX_REASON = 1000  # characters the API keeps of a denial's reason
_HINTS = {
    "session_expired": " — type /new to start a new session",
    "session_closed": " — type /new to start a new session",
    "turn_in_progress": " — wait for it to finish, or Ctrl-C in the chat that started it",
    "unauthorized": " — check --token / PARLEY_TOKEN",
    "approval_pending": " — decide the waiting calls first, then send it again (Up recalls it)",
    "already_decided": " — it was decided elsewhere, or waited too long",
}


class Quit(Exception):
    """The user asked to leave (second Ctrl-C, Ctrl-D, /quit)."""


@dataclass(frozen=True, slots=True)
class Decision:
    execution_id: str
    approved: bool
    reason: str | None = None
    always: bool = False


class StateFile:
    """The last session id per server URL (a convenience: unreadable or unwritable is ignored)."""

    def __init__(self) -> None:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        self.path = Path(base) / "parley" / "chat.json"

    def _load(self) -> dict[str, str]:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sessions = json.loads(self.path.read_text(encoding="utf-8")).get("sessions", {})
            return {k: v for k, v in sessions.items() if isinstance(v, str)}
        return {}

    def get(self, url: str) -> str | None:
        return self._load().get(url)

    def put(self, url: str, session_id: str) -> None:
        sessions = {**self._load(), url: session_id}
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"sessions": sessions}, indent=2), encoding="utf-8")
            tmp.replace(self.path)


def waiting_calls(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls of a session (`GET /sessions/{id}`) that wait for a decision, as `approval_required` has them."""
    return [
        {
            "executionId": row["id"],
            "toolName": row.get("toolName"),
            "input": row.get("input") or {},
            "description": row.get("description") or "",
            "expiresAt": row.get("expiresAt"),
        }
        for row in detail.get("pendingExecutions") or []
        if row.get("status", "pending") == "pending"
    ]


class Chat:
    def __init__(self, api: Api, state: StateFile, console: Console, lines: LineReader) -> None:
        self.api, self.state, self.console, self.lines = api, state, console, lines
        self.session_id: str | None = None

    # -- output ----------------------------------------------------------------------------------

    def say(self, text: str, style: str = "") -> None:
        self.console.print(text, style=style)

    def show_error(self, exc: ApiError) -> None:
        hint = _HINTS.get(exc.code, "")
        if exc.code == "rate_limited" and exc.retry_after:
            hint = f" — retry in {exc.retry_after} s"
        self.say(f"error [{exc.code}] (HTTP {exc.status}): {exc.message}{hint}", style="red")

    # -- sessions --------------------------------------------------------------------------------

    def use(self, session: dict[str, Any], verb: str) -> None:
        self.session_id = str(session["id"])
        self.state.put(self.api.url, self.session_id)
        title = session.get("title") or "untitled"
        turns = session.get("turnCount")
        extra = f", {turns} turns" if turns else ""
        self.say(f"{verb} session {self.session_id} ({title}{extra})", style="dim")

    def new_session(self) -> str:
        self.use(self.api.call("POST", "/api/v1/ai/sessions", json={}), "new")
        assert self.session_id is not None
        return self.session_id

    def current(self) -> str:
        return self.session_id if self.session_id is not None else self.new_session()

    def open_session(self, session_id: str, *, verb: str = "resumed") -> dict[str, Any] | None:
        """Open a session; its detail (with the calls waiting in it), or None when it cannot be."""
        try:
            detail: dict[str, Any] = self.api.call("GET", f"/api/v1/ai/sessions/{session_id}")
        except ApiError as exc:
            self.show_error(exc)
            return None
        session = detail["session"]
        self.use(session, verb)
        if session.get("status") not in (None, "active"):
            self.say(f"this session is {session['status']}: type /new for a fresh one", style="dim")
        return detail

    def start(self, session_id: str | None) -> dict[str, Any] | None:
        """The session to chat in: the one asked for, the last one used here, or a new one."""
        if session_id is not None:
            return self.open_session(session_id)
        remembered = self.state.get(self.api.url)
        if remembered is not None:
            try:
                detail: dict[str, Any] = self.api.call("GET", f"/api/v1/ai/sessions/{remembered}")
            except ApiError as exc:
                if exc.status not in (404, 410):
                    raise
            else:
                if detail["session"].get("status") == "active":
                    self.use(detail["session"], "resumed")
                    return detail
        self.new_session()
        return {}

    # -- streams ---------------------------------------------------------------------------------

    def stream(self, start: Callable[[Out], None]) -> Render:
        """Draw the stream `start` reads (on a helper thread) until it ends; Ctrl-C asks for a stop."""
        events: Out = queue.Queue()
        threading.Thread(target=start, args=(events,), daemon=True).start()
        render = Render(self.console)
        stop_deadline = 0.0
        while True:
            try:
                wait = max(stop_deadline - time.monotonic(), 0.0) if render.stopped else None
                if render.stale:  # draw what has come once the stream pauses
                    wait = _REDRAW_AFTER if wait is None else min(wait, _REDRAW_AFTER)
                try:
                    kind, value = events.get(timeout=wait)
                except queue.Empty:
                    if render.stale:
                        render.redraw()
                        continue
                    render.note("[stop requested; the server has not confirmed yet]")
                    return render
                if kind == "end":
                    render.finish()
                    return render
                if kind == "event":
                    render.event(*value)
                elif kind == "json":
                    render.answer = value
                elif kind == "api_error":
                    render.settle()
                    render.refused = value
                    self.show_error(value)
                else:
                    render.lost = True
                    render.note(f"error [{'connection' if kind == 'failed' else 'stream'}]: {value}", style="red")
            except KeyboardInterrupt:
                if render.stopped:
                    render.settle()
                    raise Quit from None
                render.stopped = True  # the terminal echoed ^C; "[stopped]" follows once confirmed
                stop_deadline = time.monotonic() + _STOP_WAIT_SECONDS
                try:
                    self.api.interrupt(self.current())
                except KeyboardInterrupt:
                    raise Quit from None
                except httpx2.HTTPError as exc:
                    self.say(f"\nerror [connection]: could not send stop: {exc}", style="red")

    def send(self, text: str, tool_choice: Any = None) -> None:
        sid = self.current()
        self.follow_up(self.stream(lambda out: self.api.stream_turn(sid, text, out, tool_choice)))

    def follow_up(self, render: Render) -> None:
        """After a stream: ask the calls it left waiting, or look for them when it could not show them."""
        if render.stopped:
            return
        if render.approvals:
            self.decide(render.approvals)
        elif render.lost or (isinstance(render.refused, ApiError) and render.refused.code == "approval_pending"):
            self.decide_waiting()

    # -- approvals -------------------------------------------------------------------------------

    def decide_waiting(self, detail: dict[str, Any] | None = None) -> None:
        """Ask the calls that wait in the session (from `detail`, else as the server has them now)."""
        if self.session_id is None:
            return
        if detail is None:
            detail = self.api.call("GET", f"/api/v1/ai/sessions/{self.session_id}")
        calls = waiting_calls(detail)
        if calls:
            self.say(
                f"{len(calls)} tool call{'s' if len(calls) > 1 else ''} of this chat wait for you:", style="yellow"
            )
            self.decide(calls)

    def decide(self, calls: list[dict[str, Any]]) -> None:
        """Ask each call, then send the decisions; a continuation that asks again is asked in turn."""
        sid = self.current()
        while calls:
            decisions = self.ask_calls(calls)
            if decisions is None:
                self.say("the calls still wait; they are asked again when you send a message", style="yellow")
                return
            calls, lost = [], False
            for number, decision in enumerate(decisions, 1):
                render = self.stream(functools.partial(self.send_decision, sid, decision))
                if render.stopped:
                    return
                calls += render.approvals
                lost = lost or render.lost
                pending = (render.answer or {}).get("pending")
                if number == len(decisions) and pending:
                    self.say(f"[{pending} more call{'s' if pending > 1 else ''} wait for a decision elsewhere]", "dim")
            if not calls and lost:
                calls = waiting_calls(self.api.call("GET", f"/api/v1/ai/sessions/{sid}"))

    def send_decision(self, sid: str, decision: Decision, out: Out) -> None:
        self.api.decide(
            sid, decision.execution_id, out, approved=decision.approved, reason=decision.reason, always=decision.always
        )

    def ask_calls(self, calls: list[dict[str, Any]]) -> list[Decision] | None:
        """A decision for each call, asked one after another; None when Ctrl-C leaves them waiting."""
        decisions = []
        for index, call in enumerate(calls, 1):
            self.console.print(approval_card(call, index, len(calls)))
            try:
                decisions.append(self.ask_call(str(call["executionId"])))
            except KeyboardInterrupt:
                self.say("")
                return None
        return decisions

    def ask_call(self, execution_id: str) -> Decision:
        while True:
            answer = self.ask(CHOICES).strip().lower()
            if answer in ("y", "yes"):
                return Decision(execution_id, approved=True)
            if answer in ("a", "always"):
                return Decision(execution_id, approved=True, always=True)
            if answer in ("n", "no"):
                reason = self.ask("  why not? (optional, Enter to skip): ").strip()
                return Decision(execution_id, approved=False, reason=reason[:_MAX_REASON] or None)
            self.say("  answer y, n or a", style="yellow")

    def ask(self, prompt: str) -> str:
        try:
            return self.lines.ask(prompt)
        except EOFError:
            raise Quit from None

    # -- tools -----------------------------------------------------------------------------------

    def list_tools(self) -> None:
        tools = self.api.session_tools(self.current())
        if not tools:
            self.say("this chat has no tools (the server's PARLEY_MCP_CONFIG names none)")
            return
        title_width = max(len(str(t["title"])) for t in tools)
        name_width = max(len(str(t["name"])) for t in tools)
        for tool in tools:
            if tool.get("alwaysAllowed"):
                rule = "allowed for this chat"
            else:
                rule = "asks first" if tool.get("asks") else "runs without asking"
            self.say(f"  {tool['title']:<{title_width}}  {tool['name']:<{name_width}}  {rule}")
        self.say("/tool <name> <text> has the model call one now, e.g. /tool calculator 2+3*4", style="dim")

    def force_tool(self, arg: str) -> None:
        query, _, text = arg.strip().partition(" ")
        if not query:
            self.say("usage: /tool <name> <text>   (/tools lists the names)")
            return
        try:
            tool = find_tool(query, self.api.session_tools(self.current()))
        except ToolNameError as exc:
            self.say(str(exc), style="yellow")
            return
        self.send(text.strip() or str(tool.get("title") or tool["name"]), tool_choice={"name": tool["name"]})

    # -- commands --------------------------------------------------------------------------------

    def command(self, line: str) -> None:
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit", "/q"):
            raise Quit
        if name == "/new":
            self.new_session()
        elif name == "/open" and arg.strip():
            detail = self.open_session(arg.strip(), verb="opened")
            if detail is not None:
                self.decide_waiting(detail)
        elif name == "/sessions":
            self.list_sessions()
        elif name == "/history":
            self.history()
        elif name == "/tools":
            self.list_tools()
        elif name == "/tool":
            self.force_tool(arg)
        elif name == "/usage":
            self.usage()
        else:
            self.say(HELP)

    def list_sessions(self) -> None:
        data = self.api.call("GET", "/api/v1/ai/sessions", params={"limit": 20})["data"]
        if not data:
            self.say("no sessions yet")
        for s in data:
            mark = "*" if s["id"] == self.session_id else " "
            cost = s.get("totalCostCents") or 0
            self.say(
                f"{mark} {s['id']}  {s['status']:<7} {s.get('turnCount', 0):>3} turns  "
                f"{cost}¢  {str(s.get('lastActivityAt', ''))[:16].replace('T', ' ')}  {s.get('title') or 'untitled'}"
            )

    def history(self) -> None:
        if self.session_id is None:
            self.say("no session")
            return
        data = self.api.call("GET", f"/api/v1/ai/sessions/{self.session_id}")
        messages = data.get("messages") or []
        if not messages:
            self.say("(no messages yet)", style="dim")
        for m in messages:
            if m["role"] == "user":
                self.say(f"you> {m['content']}")
                continue
            self.console.print(stored_reply(m))
            reason = m.get("finishReason")
            suffix = f", {reason}" if reason and reason not in ("stop", "end_turn") else ""
            self.say(f"    [{m.get('inputTokens')} in · {m.get('outputTokens')} out tokens{suffix}]", style="dim")

    def usage(self) -> None:
        data = self.api.call("GET", "/api/v1/ai/usage")
        for period in ("daily", "monthly"):
            u = data.get(period) or {}
            self.say(
                f"{period:<8} {u.get('messageCount', 0)} messages · {u.get('inputTokens', 0)} in / "
                f"{u.get('outputTokens', 0)} out tokens · {u.get('totalCostCents', 0)}¢"
            )
        budget = data.get("budget")
        self.say(f"budget   {json.dumps(budget) if budget else 'none'}")

    # -- loop ------------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            try:
                line = self.lines.read("you> ").strip()
            except (KeyboardInterrupt, EOFError):
                self.say("")
                raise Quit from None
            if not line:
                continue
            try:
                if line.startswith("/"):
                    self.command(line)
                else:
                    self.send(line)
            except ApiError as exc:
                self.show_error(exc)
            except httpx2.HTTPError as exc:
                self.say(f"error [connection]: cannot reach {self.api.url}: {exc}", style="red")


def run_chat(
    *,
    url: str,
    token: str,
    session_id: str | None = None,
    console: Console | None = None,
    lines: LineReader | None = None,
) -> int:
    """Chat with the parley server at `url` until the user quits; returns the exit code."""
    if not url or not token:
        print("parley chat: need --url and --token (or PARLEY_URL and PARLEY_TOKEN)", file=sys.stderr)
        return 2
    chat = Chat(Api(url, token), StateFile(), make_console(), line_reader())
    try:
        detail = chat.start(session_id)
        if detail is None:
            return 1
        chat.say(HELP, style="dim")
        chat.decide_waiting(detail)
        chat.loop()
    except Quit:
        return 0
    except ApiError as exc:
        chat.show_error(exc)
        return 1
    except httpx2.HTTPError as exc:
        print(f"parley chat: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    finally:
        chat.api.http.close()
    return 0
