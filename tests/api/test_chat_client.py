"""The terminal client (`parley chat`) against a real server: its stream reading, and its
decisions on tool calls.

The client reads on a helper thread and puts what it read on a queue, as `parley chat` does; the
test takes the main thread's place. A proxy in front of the server cuts the connection mid-reply
to show the client re-attaching after the last event it read.

`Chat` is driven with its seams: a console writing to a string, and the lines a person would type
(`Typed`). What a person sees in a real terminal is in tests/e2e/test_chat_tmux.py.
"""

from __future__ import annotations

import io
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from parley.client.api import Api, Out
from parley.client.chat import Chat, Quit, StateFile
from parley.client.render import make_console
from parley.providers.base import ForcedTool
from tests.api.conftest import create_session, detail, send
from tests.api.tooling import Tools, decide, pending_call
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider, tool_call
from tests.support.tcp_proxy import TcpProxy

TOKENS = [f"w{i} " for i in range(40)]

OnEvent = Callable[[str, dict[str, Any]], None]


def run_turn(api: Api, sid: str, content: str, on_event: OnEvent | None = None) -> list[tuple[str, Any]]:
    """What the client's reading thread hands over for one turn, up to its final `end`."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue()
    reading = threading.Thread(target=api.stream_turn, args=(sid, content, out), daemon=True)
    reading.start()
    handed: list[tuple[str, Any]] = []
    while (item := out.get(timeout=15))[0] != "end":
        handed.append(item)
        if item[0] == "event" and on_event is not None:
            on_event(*item[1])
    reading.join(timeout=5)
    return handed


def text_of(handed: list[tuple[str, Any]]) -> str:
    return "".join(data["delta"] for kind, (event, data) in handed if kind == "event" and event == "content_delta")


def test_the_client_hands_over_every_event_of_a_reply(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider(Reply(tokens=TOKENS[:5], reasoning=["Thinking."]))
    server = make_server(provider)
    api = Api(server.url, tenants.a1)
    try:
        sid = api.call("POST", "/api/v1/ai/sessions", json={})["id"]
        handed = run_turn(api, sid, "hello")
    finally:
        api.http.close()
    assert {kind for kind, _ in handed} == {"event"}
    events = [event for _, (event, _) in handed]
    assert events == [
        "title_updated",
        "message_start",
        "reasoning_delta",
        *["content_delta"] * 5,
        "message_end",
        "done",
    ]
    assert handed[2][1][1] == {"type": "reasoning_delta", "delta": "Thinking."}
    assert text_of(handed) == "".join(TOKENS[:5])


def test_a_cut_connection_reattaches_after_the_last_event_read(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider(Reply(tokens=TOKENS, delay=0.05))
    server = make_server(provider)
    proxy = TcpProxy(server.port)
    api = Api(proxy.url, tenants.a1)
    deltas = 0
    cuts: list[int] = []

    def cut_after_three_deltas(event: str, _data: dict[str, Any]) -> None:
        nonlocal deltas
        if event == "content_delta":
            deltas += 1
            if deltas == 3:
                cuts.append(proxy.cut())

    try:
        with client(server, tenants.a1) as c:
            sid = create_session(c)
            handed = run_turn(api, sid, "tell me a story", cut_after_three_deltas)
            stored = detail(c, sid)["messages"][-1]
    finally:
        api.http.close()
        proxy.close()

    assert cuts == [1]
    assert {kind for kind, _ in handed} == {"event"}  # no "lost" or "failed": the client re-attached
    assert [event for _, (event, _) in handed][-2:] == ["message_end", "done"]
    assert text_of(handed) == "".join(TOKENS)  # every piece exactly once: resumed where it was cut
    assert stored["content"] == "".join(TOKENS)
    assert provider.opened == 1
    [resume] = [sent for sent in proxy.sent() if sent.startswith(b"GET ")]
    assert resume.split(b"\r\n", 1)[0].startswith(f"GET /api/v1/ai/sessions/{sid}/events ".encode())
    assert b"\r\nlast-event-id: 1-" in resume.lower()


# -- decisions ------------------------------------------------------------------------------------


def test_a_decision_answers_json_while_others_wait_then_streams_the_rest(tools: Tools) -> None:
    tools.provider.enqueue(
        Reply(tokens=[], calls=[("t__record", {"note": "one"}), ("t__record", {"note": "two"})], finish="tool_calls"),
        Reply(tokens=["Both done."]),
    )
    server = tools.start()
    api = Api(server.url, tools.tenants.a1)
    try:
        sid = api.call("POST", "/api/v1/ai/sessions", json={})["id"]
        asked = [data for kind, (event, data) in run(api.stream_turn, sid, "note both") if event == "approval_required"]
        first = run(api.decide, sid, asked[0]["executionId"], approved=False, reason="not this one")
        second = run(api.decide, sid, asked[1]["executionId"], approved=True, always=True)
    finally:
        api.http.close()
    assert first == [("json", {"success": True, "approved": False, "pending": 1})]
    events = [event for kind, (event, _) in second]
    assert events[:4] == ["message_start", "tool_result", "tool_use_start", "tool_result"], events
    assert events[-2:] == ["message_end", "done"]
    assert tools.ran() == ["two"]
    denied = next(data for _, (event, data) in second if event == "tool_result" and data["isError"])
    assert "not this one" in denied["output"]


class Typed:
    """What a person types, line by line: at the prompt (`read`) and at questions (`ask`); then Ctrl-D."""

    def __init__(self, *lines: str | type[BaseException]) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []

    def read(self, prompt: str) -> str:
        return self.ask(prompt)

    def ask(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        if isinstance(line, str):
            return line
        raise line


@pytest.fixture
def screen() -> io.StringIO:
    return io.StringIO()


def chat_at(url: str, token: str, typed: Typed, screen: io.StringIO, tmp_path: Any) -> Chat:
    state = StateFile()
    state.path = tmp_path / "chat.json"
    return Chat(Api(url, token), state, make_console(file=screen, width=100), typed)


@pytest.fixture
def waiting(tools: Tools) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """A server with a session whose call to `t__record` waits for a decision: (url, session, call)."""
    tools.provider.enqueue(tool_call("t__record", {"note": "milk"}), Reply(tokens=["Noted."]))
    server = tools.start()
    with client(server, tools.tenants.a1) as c:
        sid = create_session(c)
        yield server.url, sid, pending_call(send(c, sid, "remember milk"))


def test_calls_a_cut_stream_never_showed_are_asked_from_the_session(
    tools: Tools, waiting: tuple[str, str, dict[str, Any]], screen: io.StringIO, tmp_path: Any
) -> None:
    url, sid, _ = waiting
    typed = Typed("maybe", "y")
    chat = chat_at(url, tools.tenants.a1, typed, screen, tmp_path)
    chat.session_id = sid

    def cut_before_the_question(out: Out) -> None:
        out.put(("lost", "the reply ended while the connection was down"))
        out.put(("end", None))

    try:
        chat.follow_up(chat.stream(cut_before_the_question))
    finally:
        chat.api.http.close()
    shown = screen.getvalue()
    assert "error [stream]: the reply ended while the connection was down" in shown
    assert "1 tool call of this chat wait for you:" in shown
    assert "? t__record asks for your approval" in shown
    assert '"note": "milk"' in shown
    assert "answer y, n or a" in shown  # "maybe" was asked again
    assert "ai> Noted." in shown
    assert tools.ran() == ["milk"]


def test_a_call_decided_elsewhere_meanwhile_is_said_so(
    tools: Tools, waiting: tuple[str, str, dict[str, Any]], screen: io.StringIO, tmp_path: Any
) -> None:
    url, sid, call = waiting
    chat = chat_at(url, tools.tenants.a1, Typed("n", "too late anyway"), screen, tmp_path)
    chat.session_id = sid
    with client(tools.start(), tools.tenants.a1) as c:
        assert decide(c, sid, call["executionId"], approved=True).status == 200
    try:
        chat.decide([call])
    finally:
        chat.api.http.close()
    assert "error [already_decided] (HTTP 409)" in screen.getvalue()
    assert "it was decided elsewhere, or waited too long" in screen.getvalue()
    assert tools.ran() == ["milk"]


def test_ctrl_c_at_a_question_leaves_the_calls_waiting_and_ctrl_d_quits(
    tools: Tools, waiting: tuple[str, str, dict[str, Any]], screen: io.StringIO, tmp_path: Any
) -> None:
    url, sid, call = waiting
    chat = chat_at(url, tools.tenants.a1, Typed(KeyboardInterrupt), screen, tmp_path)
    chat.session_id = sid
    try:
        chat.decide([call])
        assert "the calls still wait; they are asked again when you send a message" in screen.getvalue()
        with pytest.raises(Quit):
            chat.decide([call])  # nothing more typed: Ctrl-D
        with client(tools.start(), tools.tenants.a1) as c:
            assert [e["id"] for e in detail(c, sid)["pendingExecutions"]] == [call["executionId"]]
    finally:
        chat.api.http.close()
    assert tools.ran() == []


def test_tools_commands_without_tools_or_a_name(
    make_server: ServerFactory, tenants: Tenants, screen: io.StringIO, tmp_path: Any
) -> None:
    provider = ScriptedProvider()
    server = make_server(provider)
    chat = chat_at(server.url, tenants.a1, Typed(), screen, tmp_path)
    try:
        chat.command("/tools")
        chat.command("/tool")
        chat.command("/tool calculator 2+3*4")
    finally:
        chat.api.http.close()
    shown = screen.getvalue()
    assert "this chat has no tools (the server's PARLEY_MCP_CONFIG names none)" in shown
    assert "usage: /tool <name> <text>" in shown
    assert "no tool is called 'calculator'; this chat has no tools" in shown
    assert provider.opened == 0


def test_a_tool_named_without_text_is_asked_for_by_its_title(tools: Tools, screen: io.StringIO, tmp_path: Any) -> None:
    tools.provider.enqueue(tool_call("t__echo", {"text": "hi"}), Reply(tokens=["It said hi."]))
    server = tools.start()
    chat = chat_at(server.url, tools.tenants.a1, Typed(), screen, tmp_path)
    try:
        chat.command("/tool ECHO")
    finally:
        chat.api.http.close()
    assert tools.provider.choices[0] == ForcedTool("t__echo")
    assert tools.provider.calls[0][-1].plain_text == "echo"
    shown = screen.getvalue()
    assert '→ t__echo(text="hi")' in shown
    assert "← hi" in shown


def test_parley_chat_reads_piped_input_and_writes_plain_text(
    tools: Tools, waiting: tuple[str, str, dict[str, Any]], tmp_path: Any
) -> None:
    url, sid, _ = waiting
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "parley", "chat", "--url", url, "--token", tools.tenants.a1, "--session", sid]
    done = subprocess.run(
        command, input="a\n/tools\n", capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\x1b[" not in out  # not a terminal: no colours, no redrawing
    assert "? t__record asks for your approval" in out  # the call waiting in the session, asked at start
    assert "ai> Noted." in out
    assert re.search(r"t__record +allowed for this chat", out), out
    assert tools.ran() == ["milk"]
    assert not (tmp_path / "parley" / "chat-history").exists()  # no history without a terminal


def run(start: Callable[..., None], *args: Any, **kwargs: Any) -> list[tuple[str, Any]]:
    """What a stream's reading thread hands over, up to its final `end`."""
    out: Out = queue.Queue()
    reading = threading.Thread(target=start, args=(*args, out), kwargs=kwargs, daemon=True)
    reading.start()
    handed = []
    while (item := out.get(timeout=15))[0] != "end":
        handed.append(item)
    reading.join(timeout=5)
    return handed
