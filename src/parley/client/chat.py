"""`parley chat`: a terminal client of a parley server, over its public HTTP API only.

Reads a line, streams the reply token by token (reasoning dimmed), prints a usage footer. Ctrl-C
during a reply asks the server to stop (`POST …/interrupt`) and keeps the partial text on screen;
a second Ctrl-C, while stopping or at the prompt, quits. The last session per server URL is kept
in `$XDG_STATE_HOME/parley/chat.json` so the next run resumes it.

The stream is read on a helper thread that hands events to the main thread through a queue: the
main thread only ever blocks in `queue.get`, where Ctrl-C lands cleanly, never half-way through
an HTTP read.

May import: the standard library, httpx2 and parley's SSE decoder (`parley.providers.sse`, itself
standard library only). Nothing else from parley: this is any API client's view.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2

from parley.providers.sse import ServerSentEvent, SSEDecoder

HELP = "commands: /new  /sessions  /open <id>  /history  /usage  /help  /quit   (Ctrl-C stops a reply)"
DIM, RESET = "\x1b[2m", "\x1b[0m"
_STREAM_TIMEOUT = httpx2.Timeout(30.0, read=90.0)  # heartbeats arrive every <= 15 s
_STOP_WAIT_SECONDS = 15.0


class ApiError(Exception):
    """A non-2xx answer, carrying the envelope's code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    @classmethod
    def from_response(cls, response: httpx2.Response) -> ApiError:
        body: Any = {}
        with contextlib.suppress(ValueError):
            body = response.json()
        body = body if isinstance(body, dict) else {}
        message = str(body.get("error") or response.reason_phrase or "request failed")
        code = str(body.get("code") or f"http_{response.status_code}")
        return cls(response.status_code, code, message, response.headers.get("retry-after"))


class Quit(Exception):
    """The user asked to leave (second Ctrl-C, Ctrl-D, /quit)."""


class Api:
    """The handful of endpoints the client uses."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx2.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response.json() if response.content else {}

    def interrupt(self, session_id: str) -> None:
        with contextlib.suppress(ApiError):  # 409 no_turn_running: it ended on its own meanwhile
            self.call("POST", f"/api/v1/ai/sessions/{session_id}/interrupt", timeout=10.0)

    def stream_turn(self, session_id: str, content: str, out: queue.Queue[tuple[str, Any]]) -> None:
        """Run on a helper thread: POST the message, put each event on `out`, re-attach if cut."""
        base = f"/api/v1/ai/sessions/{session_id}"
        last_id = ""  # of the last event read, for `Last-Event-ID` when re-attaching
        try:
            request = self.http.build_request(
                "POST", f"{base}/messages", json={"content": content}, timeout=_STREAM_TIMEOUT
            )
            for attempt in range(4):
                response = self.http.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        response.read()
                        if attempt == 0:
                            out.put(("api_error", ApiError.from_response(response)))
                        else:  # the turn finished while we were away
                            out.put(("lost", "the reply ended while the connection was down"))
                        return
                    done, last_id = self._pump(response, out, last_id)
                    if done:
                        return
                finally:
                    response.close()
                # Cut off before `done`: re-attach to the running turn after the last event seen.
                headers = {"Last-Event-ID": last_id} if last_id else {}
                request = self.http.build_request("GET", f"{base}/events", headers=headers, timeout=_STREAM_TIMEOUT)
            out.put(("lost", "the connection kept dropping"))
        except httpx2.HTTPError as exc:
            out.put(("failed", f"{type(exc).__name__}: {exc}"))
        finally:
            out.put(("end", None))

    @staticmethod
    def _pump(response: httpx2.Response, out: queue.Queue[tuple[str, Any]], last_id: str) -> tuple[bool, str]:
        """Put the events of `response` on `out`; returns (whether `done` came, the last event's id)."""
        with contextlib.suppress(httpx2.TransportError):  # a cut connection: caller re-attaches
            for sse in _events(response):
                last_id = sse.id or last_id
                try:
                    payload = json.loads(sse.data)
                except ValueError:
                    continue
                out.put(("event", (sse.event, payload)))
                if sse.event == "done":
                    return True, last_id
        return False, last_id


def _events(response: httpx2.Response) -> Iterator[ServerSentEvent]:
    """The events of one response as its bytes arrive. A decoder per response: a cut connection
    leaves half an event behind, which must neither be dispatched nor run into the next stream."""
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        yield from decoder.feed(chunk)
    yield from decoder.finish()


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


class Chat:
    def __init__(self, api: Api, state: StateFile, *, color: bool) -> None:
        self.api, self.state, self.color = api, state, color
        self.session_id: str | None = None

    # -- output ----------------------------------------------------------------------------------

    def dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def show_error(self, exc: ApiError) -> None:
        hint = {
            "session_expired": " — type /new to start a new session",
            "session_closed": " — type /new to start a new session",
            "turn_in_progress": " — wait for it to finish, or Ctrl-C in the chat that started it",
            "unauthorized": " — check --token / PARLEY_TOKEN",
            "rate_limited": f" — retry in {exc.retry_after} s" if exc.retry_after else "",
        }.get(exc.code, "")
        print(f"error [{exc.code}] (HTTP {exc.status}): {exc.message}{hint}")

    # -- sessions --------------------------------------------------------------------------------

    def use(self, session: dict[str, Any], verb: str) -> None:
        self.session_id = str(session["id"])
        self.state.put(self.api.url, self.session_id)
        title = session.get("title") or "untitled"
        turns = session.get("turnCount")
        extra = f", {turns} turns" if turns else ""
        print(self.dim(f"{verb} session {self.session_id} ({title}{extra})"))

    def new_session(self) -> None:
        self.use(self.api.call("POST", "/api/v1/ai/sessions", json={}), "new")

    def open_session(self, session_id: str, *, verb: str = "resumed") -> bool:
        try:
            session = self.api.call("GET", f"/api/v1/ai/sessions/{session_id}")["session"]
        except ApiError as exc:
            self.show_error(exc)
            return False
        self.use(session, verb)
        if session.get("status") not in (None, "active"):
            print(self.dim(f"this session is {session['status']}: type /new for a fresh one"))
        return True

    def start(self, session_id: str | None) -> bool:
        if session_id is not None:
            return self.open_session(session_id)
        remembered = self.state.get(self.api.url)
        if remembered is not None:
            try:
                session = self.api.call("GET", f"/api/v1/ai/sessions/{remembered}")["session"]
            except ApiError as exc:
                if exc.status not in (404, 410):
                    raise
            else:
                if session.get("status") == "active":
                    self.use(session, "resumed")
                    return True
        self.new_session()
        return True

    # -- one turn --------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        if self.session_id is None:
            self.new_session()
        assert self.session_id is not None
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        threading.Thread(target=self.api.stream_turn, args=(self.session_id, text, events), daemon=True).start()
        render = Render(self)
        stopping = False
        while True:
            try:
                try:
                    kind, value = events.get(timeout=_STOP_WAIT_SECONDS if stopping else None)
                except queue.Empty:
                    render.line_break()
                    print(self.dim("[stop requested; the server has not confirmed yet]"))
                    return
                if kind == "end":
                    render.finish(stopped=stopping)
                    return
                if kind == "event":
                    render.event(*value)
                elif kind == "api_error":
                    self.show_error(value)
                else:
                    render.line_break()
                    print(f"error [{'connection' if kind == 'failed' else 'stream'}]: {value}")
            except KeyboardInterrupt:
                if stopping:
                    render.line_break()
                    raise Quit from None
                stopping = True  # the terminal echoed ^C; "[stopped]" follows once confirmed
                try:
                    self.api.interrupt(self.session_id)
                except KeyboardInterrupt:
                    raise Quit from None
                except httpx2.HTTPError as exc:
                    print(f"\nerror [connection]: could not send stop: {exc}")

    # -- commands --------------------------------------------------------------------------------

    def command(self, line: str) -> None:
        name, _, arg = line.partition(" ")
        if name in ("/quit", "/exit", "/q"):
            raise Quit
        if name == "/new":
            self.new_session()
        elif name == "/open" and arg.strip():
            self.open_session(arg.strip(), verb="opened")
        elif name == "/sessions":
            self.list_sessions()
        elif name == "/history":
            self.history()
        elif name == "/usage":
            self.usage()
        else:
            print(HELP)

    def list_sessions(self) -> None:
        data = self.api.call("GET", "/api/v1/ai/sessions", params={"limit": 20})["data"]
        if not data:
            print("no sessions yet")
        for s in data:
            mark = "*" if s["id"] == self.session_id else " "
            cost = s.get("totalCostCents") or 0
            print(
                f"{mark} {s['id']}  {s['status']:<7} {s.get('turnCount', 0):>3} turns  "
                f"{cost}¢  {str(s.get('lastActivityAt', ''))[:16].replace('T', ' ')}  {s.get('title') or 'untitled'}"
            )

    def history(self) -> None:
        if self.session_id is None:
            print("no session")
            return
        data = self.api.call("GET", f"/api/v1/ai/sessions/{self.session_id}")
        messages = data.get("messages") or []
        if not messages:
            print(self.dim("(no messages yet)"))
        for m in messages:
            if m["role"] == "user":
                print(f"you> {m['content']}")
                continue
            if m.get("reasoning"):
                print(self.dim(m["reasoning"]))
            print(f"ai> {m['content']}")
            reason = m.get("finishReason")
            suffix = f", {reason}" if reason and reason not in ("stop", "end_turn") else ""
            print(self.dim(f"    [{m.get('inputTokens')} in · {m.get('outputTokens')} out tokens{suffix}]"))

    def usage(self) -> None:
        data = self.api.call("GET", "/api/v1/ai/usage")
        for period in ("daily", "monthly"):
            u = data.get(period) or {}
            print(
                f"{period:<8} {u.get('messageCount', 0)} messages · {u.get('inputTokens', 0)} in / "
                f"{u.get('outputTokens', 0)} out tokens · {u.get('totalCostCents', 0)}¢"
            )
        budget = data.get("budget")
        print(f"budget   {json.dumps(budget) if budget else 'none'}")

    # -- loop ------------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            try:
                line = input("you> ").strip()
            except (KeyboardInterrupt, EOFError):
                print()
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
                print(f"error [connection]: cannot reach {self.api.url}: {exc}")


class Render:
    """Draws one reply as its events arrive."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.mode: str | None = None  # "reasoning" | "content" while a line is open
        self.ended = False
        self.failed = False

    def line_break(self) -> None:
        if self.mode is not None:
            self.chat.write(RESET + "\n" if self.chat.color else "\n")
            self.mode = None

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("content_delta", "reasoning_delta"):
            mode = kind.removesuffix("_delta")
            if mode != self.mode:
                self.line_break()
                self.chat.write((DIM if mode == "reasoning" and self.chat.color else "") + "ai> ")
                self.mode = mode
            self.chat.write(str(data.get("delta", "")))
        elif kind == "message_end":
            self.line_break()
            self.ended = True
            cost = data.get("costUsd")
            estimated = " (estimated)" if data.get("usageEstimated") else ""
            print(
                self.chat.dim(
                    f"[{data.get('inputTokens')} in · {data.get('outputTokens')} out tokens · "
                    f"{'$' + str(cost) if cost is not None else 'cost n/a'}{estimated}]"
                )
            )
        elif kind == "error":
            self.line_break()
            self.failed = True
            code = data.get("code", "error")
            print(f"error [{code}]: {data.get('message', '')}")

    def finish(self, *, stopped: bool) -> None:
        self.line_break()
        if stopped and not self.ended and not self.failed:
            print(self.chat.dim("[stopped]"))


def run_chat(*, url: str, token: str, session_id: str | None = None) -> int:
    """Chat with the parley server at `url` until the user quits; returns the exit code."""
    if not url or not token:
        print("parley chat: need --url and --token (or PARLEY_URL and PARLEY_TOKEN)", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    chat = Chat(Api(url, token), StateFile(), color=sys.stdout.isatty())
    try:
        if not chat.start(session_id):
            return 1
        print(chat.dim(HELP))
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
