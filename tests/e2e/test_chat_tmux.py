"""`parley chat` driven like a person would, in a real terminal (tmux), against a real parley.

tmux gives the client a pty, so Ctrl-C is a real SIGINT from the terminal, keys are keys and what
we assert is what a user would see on screen. The tmux server runs on a private socket and is
killed at the end.

The first test talks to the real local model. The others run the demo tools behind a scripted
model server (`scripted_tools`): the small model calls a tool with arguments of its own choosing
and never answers in Markdown on demand, and these tests are about what the client does with a
given call or answer (tool calls and approvals against the real local model are in
test_local_tools.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E, Parley, Scripted
from tests.support.scripted_upstream import TokenStream, tool_call_stream

pytestmark = pytest.mark.e2e


class Tmux:
    def __init__(self) -> None:
        self.socket_name = ""

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket_name, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, f"tmux {args}: {result.stderr}"
        return result.stdout

    def start(self, command: list[str], *, width: int = 200, height: int = 50) -> None:
        """Run `command` in a new window `chat` (in place of the last one); the pane stays after
        the command exits, with its exit status on the last line."""
        self.stop()
        # A server of its own each time: a server just told to exit may still hold its socket.
        self.socket_name = f"parley-e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        shell = shlex.join(command) + '; echo "[chat exited $?]"'
        # remain-on-exit keeps the pane, and so that status line, after the shell ends.
        self("new-session", "-d", "-s", "chat", "-x", str(width), "-y", str(height), shell, ";",
             "set-option", "-g", "remain-on-exit", "on")  # fmt: skip

    def stop(self) -> None:
        if self.socket_name:
            subprocess.run(["tmux", "-L", self.socket_name, "kill-server"], capture_output=True, check=False)

    def screen(self) -> str:
        # -J joins wrapped lines; -S - includes the scrollback.
        return self("capture-pane", "-p", "-J", "-S", "-", "-t", "chat")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "chat", *keys)

    def type_line(self, text: str) -> None:
        self("send-keys", "-t", "chat", "-l", text)
        self.keys("Enter")

    def wait_for(self, what: str, check: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}; the screen shows:\n{screen}")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: `apt-get install -y tmux`")
    term = Tmux()
    yield term
    term.stop()


def after(screen: str, marker: str) -> str:
    """What the screen shows after the last occurrence of `marker`."""
    index = screen.rfind(marker)
    return screen[index + len(marker) :] if index >= 0 else ""


def chat_command(parley: Parley, home: Path) -> list[str]:
    """`parley chat` against `parley`, its state and input history kept under `home`; the pane's
    size is the terminal's (COLUMNS and LINES, which rich would believe first, are dropped)."""
    client = [sys.executable, "-m", "parley", "chat", "--url", parley.parley.url, "--token", parley.token]
    env = ["env", "-u", "COLUMNS", "-u", "LINES", f"XDG_STATE_HOME={home}", f"XDG_DATA_HOME={home}", "TERM=xterm"]
    return [*env, *client]


def at_prompt(screen: str) -> bool:
    lines = [line for line in screen.splitlines() if line.strip()]
    return bool(lines) and lines[-1].rstrip() == "you>"


@pytest.mark.timeout(150)
def test_chat_answers_stops_on_ctrl_c_and_shows_history(e2e: E2E, tmux: Tmux, tmp_path: Path) -> None:
    tmux.start(chat_command(e2e, tmp_path))
    tmux.wait_for("the prompt", lambda s: "/history" in s and at_prompt(s), timeout=30)

    # 1. A question gets an answer, then a usage footer and a new prompt.
    question = "What is the capital of France? Answer in one short sentence."
    tmux.type_line(question)
    screen = tmux.wait_for("the answer", lambda s: "out tokens" in after(s, question) and at_prompt(s))
    answer = after(screen, question)
    assert re.search(r"ai> \S", answer), answer
    assert "(estimated)" in answer

    # 2. A long answer, interrupted with Ctrl-C once some text is on screen.
    story = "Write a long story about a cat who sails the sea."
    tmux.type_line(story)
    tmux.wait_for(
        "the story to start",
        lambda s: len(after(after(s, story), "ai> ").strip()) >= 20,
    )
    tmux.keys("C-c")
    screen = tmux.wait_for("the stop", lambda s: "[stopped]" in after(s, story) and at_prompt(s), timeout=30)
    shown = after(screen, story)
    partial = after(shown, "ai> ").split("[stopped]")[0].replace("^C", "").strip()
    assert len(partial) >= 20, shown
    assert "out tokens" not in shown  # no usage footer: the turn was stopped, not finished

    # 3. /history shows both turns, the stopped one marked as interrupted.
    tmux.type_line("/history")
    screen = tmux.wait_for("the history", lambda s: "interrupted" in after(s, "you> /history") and at_prompt(s))
    history = after(screen, "you> /history")
    assert f"you> {question}" in history
    assert f"you> {story}" in history
    assert history.count("ai> ") == 2
    assert partial[:20] in history

    # 4. /quit leaves with status 0.
    tmux.type_line("/quit")
    screen = tmux.wait_for("the client to exit", lambda s: "[chat exited 0]" in s, timeout=10)
    print("\n--- the terminal at the end ---\n" + screen.rstrip())


def asked(screen: str) -> bool:
    """Whether the client waits for a decision on a tool call."""
    lines = [line for line in screen.splitlines() if line.strip()]
    return bool(lines) and lines[-1].rstrip().endswith("[a]lways for this chat:")


def notes(scripted: Scripted) -> list[str]:
    return (
        [json.loads(line)["text"] for line in scripted.notes.read_text().splitlines()]
        if scripted.notes.exists()
        else []
    )


@pytest.mark.timeout(120)
def test_chat_lists_and_forces_tools_and_asks_before_a_note_is_saved(
    scripted_tools: Scripted, tmux: Tmux, tmp_path: Path
) -> None:
    upstream = scripted_tools.upstream
    tmux.start(chat_command(scripted_tools, tmp_path))
    tmux.wait_for("the prompt", lambda s: "/tools" in s and at_prompt(s), timeout=30)

    # 1. /tools: each tool by title and name, and whether it asks first.
    tmux.type_line("/tools")
    screen = tmux.wait_for("the tools", lambda s: "demo__search_notes" in s and at_prompt(s))
    listed = after(screen, "you> /tools")
    assert re.search(r"Calculator\s+demo__calculate\s+runs without asking", listed), listed
    assert re.search(r"Save a note\s+demo__add_note\s+asks first", listed), listed

    # 2. /tool calculator 2+3*4: the model is made to call demo__calculate; the tool's result shows.
    upstream.enqueue(
        tool_call_stream([("demo__calculate", '{"expression": "2+3*4"}')], shape="llama-cpp-python"),
        TokenStream(tokens=["That makes ", "**14**."]),
    )
    tmux.type_line("/tool calculator 2+3*4")
    screen = tmux.wait_for("the calculation", lambda s: "out tokens" in after(s, "/tool calculator") and at_prompt(s))
    shown = after(screen, "you> /tool calculator 2+3*4")
    assert '→ demo__calculate(expression="2+3*4")' in shown, shown
    assert "← 2+3*4 = 14" in shown, shown
    assert "ai> That makes 14." in shown, shown  # Markdown: the emphasis is drawn, not spelt out
    forced = upstream.requests[-2].json
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "demo__calculate"}}
    assert forced["messages"][-1]["content"] == "2+3*4"

    # 3. /tool add_note buy milk: the card shows what the tool does and its arguments; approved, saved.
    upstream.enqueue(
        tool_call_stream([("demo__add_note", '{"text": "buy milk"}')], shape="llama-cpp-python"),
        TokenStream(tokens=["Saved."]),
    )
    tmux.type_line("/tool add_note buy milk")
    screen = tmux.wait_for("the approval question", asked)
    card = after(screen, "you> /tool add_note buy milk")
    assert "? demo__add_note asks for your approval" in card, card
    assert "Save a short note by appending it to the notes file" in card, card
    assert '{\n    "text": "buy milk"\n  }' in card, card  # pretty JSON, indented under the card
    assert notes(scripted_tools) == []  # nothing is written before the decision
    tmux.type_line("y")
    screen = tmux.wait_for("the saved note", lambda s: "out tokens" in after(s, "for this chat: y") and at_prompt(s))
    assert re.search(r"← Saved note \S+ at ", after(screen, "for this chat: y")), screen
    assert notes(scripted_tools) == ["buy milk"]

    # 4. Denied with a reason: never saved; the model is told why.
    upstream.enqueue(
        tool_call_stream([("demo__add_note", '{"text": "secret plan"}')], shape="llama-cpp-python"),
        TokenStream(tokens=["Understood."]),
    )
    tmux.type_line("/tool add secret plan")  # a prefix of add_note
    tmux.wait_for("the second question", lambda s: asked(after(s, "you> /tool add secret plan")))
    tmux.type_line("n")
    tmux.wait_for("the reason's question", lambda s: "why not?" in after(s, "you> /tool add secret plan"))
    tmux.type_line("not today")
    denial = "Enter to skip): not today"
    screen = tmux.wait_for("the denial", lambda s: "out tokens" in after(s, denial) and at_prompt(s))
    assert "✗ error: The user declined this tool call. Their reason: not today" in after(screen, denial), screen
    assert notes(scripted_tools) == ["buy milk"]
    assert "not today" in json.dumps(upstream.requests[-1].json["messages"])

    # 5. A name that picks no tool, or several, says which there are.
    sent = len(upstream.requests)
    tmux.type_line("/tool weather Paris")
    screen = tmux.wait_for("the unknown tool", lambda s: "no tool is called 'weather'" in s and at_prompt(s))
    tmux.type_line("/tool s")  # Save a note, search_notes
    tmux.wait_for(
        "the ambiguous tool", lambda s: "'s' could be demo__add_note, demo__search_notes" in s and at_prompt(s)
    )
    assert len(upstream.requests) == sent  # neither reached the model

    tmux.type_line("/quit")
    tmux.wait_for("the client to exit", lambda s: "[chat exited 0]" in s, timeout=10)


@pytest.mark.timeout(120)
def test_chat_asks_several_calls_in_turn_and_those_left_waiting_later(
    scripted_tools: Scripted, tmux: Tmux, tmp_path: Path
) -> None:
    upstream = scripted_tools.upstream
    tmux.start(chat_command(scripted_tools, tmp_path))
    tmux.wait_for("the prompt", at_prompt, timeout=30)

    # 1. Two calls in one round: asked one after the other, then decided; "always" covers the tool.
    upstream.enqueue(
        tool_call_stream([("demo__add_note", '{"text": "first"}'), ("demo__add_note", '{"text": "second"}')]),
        TokenStream(tokens=["One saved, one not."]),
    )
    tmux.type_line("Save two notes")
    screen = tmux.wait_for("the first question", asked)
    assert "(1 of 2)" in screen
    tmux.type_line("a")
    screen = tmux.wait_for("the second question", lambda s: asked(s) and "(2 of 2)" in s)
    assert notes(scripted_tools) == []  # decisions are sent once every call has one
    tmux.type_line("n")
    tmux.wait_for("the reason's question", lambda s: "why not?" in after(s, "(2 of 2)"))
    tmux.keys("Enter")  # no reason
    screen = tmux.wait_for("the continuation", lambda s: "One saved, one not." in s and at_prompt(s))
    assert notes(scripted_tools) == ["first"]
    tmux.type_line("/tools")
    screen = tmux.wait_for("the tools", lambda s: "demo__search_notes" in after(s, "you> /tools") and at_prompt(s))
    assert re.search(r"demo__add_note\s+allowed for this chat", after(screen, "you> /tools")), screen

    # 2. In a new chat, a call left waiting (Ctrl-C at the question) is asked when a message finds
    #    it in its way ...
    tmux.type_line("/new")
    screen = tmux.wait_for("the new session", lambda s: "new session" in after(s, "you> /new") and at_prompt(s))
    sid = after(screen, "you> /new").split()[2]
    upstream.enqueue(tool_call_stream([("demo__add_note", '{"text": "later"}')]))
    tmux.type_line("/tool add_note later")
    tmux.wait_for("the question", lambda s: asked(after(s, "you> /tool add_note later")))
    tmux.keys("C-c")
    screen = tmux.wait_for("the call left waiting", lambda s: "the calls still wait" in s and at_prompt(s))
    tmux.type_line("hello?")
    screen = tmux.wait_for("the refusal and the question", lambda s: asked(after(s, "you> hello?")))
    assert "error [approval_pending]" in after(screen, "you> hello?"), screen
    tmux.keys("C-c")
    tmux.wait_for("the call left waiting again", lambda s: "the calls still wait" in after(s, "you> hello?"))

    # 3. ... and when the chat is opened again.
    tmux.type_line("/quit")
    tmux.wait_for("the client to exit", lambda s: "[chat exited 0]" in s, timeout=10)
    upstream.enqueue(TokenStream(tokens=["Saved it ", "at last."]))
    tmux.start(chat_command(scripted_tools, tmp_path))
    screen = tmux.wait_for("the question at start", asked, timeout=30)
    assert f"resumed session {sid}" in screen
    assert "1 tool call of this chat wait for you" in screen
    assert '"text": "later"' in screen
    tmux.type_line("y")
    tmux.wait_for("the continuation", lambda s: "Saved it at last." in s and at_prompt(s))
    assert notes(scripted_tools) == ["first", "later"]


MARKDOWN_REPLY = (
    "Here is **the plan**:\n\n"
    "- buy *oat* milk\n"
    "- call `Bob`\n\n"
    "```python\n"
    "print('hello')\n"
    "```\n\n" + " ".join(f"word{i:02d}" for i in range(60)) + "\n"
)


@pytest.mark.timeout(90)
def test_chat_renders_markdown_as_it_streams_and_recalls_input_history(
    scripted_tools: Scripted, tmux: Tmux, tmp_path: Path
) -> None:
    pieces = re.findall(r"\S+\s*|\s+", MARKDOWN_REPLY)
    scripted_tools.upstream.enqueue(TokenStream(tokens=pieces, delay=0.1))
    tmux.start(chat_command(scripted_tools, tmp_path), width=60)
    tmux.wait_for("the prompt", at_prompt, timeout=30)
    tmux.type_line("What is the plan?")

    # Blocks appear rendered as soon as they are complete, while the rest still streams.
    screen = tmux.wait_for("the list", lambda s: "• call Bob" in s)
    assert "out tokens" not in screen
    assert "word59" not in screen

    screen = tmux.wait_for("the whole reply", lambda s: "out tokens" in s and at_prompt(s))
    reply = after(screen, "you> What is the plan?").split("[")[0]
    lines = reply.splitlines()
    assert "ai> Here is the plan:" in lines
    assert "     • buy oat milk" in lines
    assert "     • call Bob" in lines
    assert any(line.strip() == "print('hello')" for line in lines), reply
    for markup in ("**", "`", "*oat*"):
        assert markup not in reply
    # The paragraph is wrapped at word boundaries: every word whole, in order, on lines that fit.
    words = [word for line in lines for word in line.split() if word.startswith("word")]
    assert words == [f"word{i:02d}" for i in range(60)], reply
    assert all(len(line) <= 60 for line in lines)

    # Up recalls the last line, also in the next run (the history is kept in a file).
    tmux.keys("Up")
    tmux.wait_for("the recalled line", lambda s: s.rstrip().splitlines()[-1] == "you> What is the plan?")
    tmux.keys("C-u")
    tmux.type_line("/quit")
    tmux.wait_for("the client to exit", lambda s: "[chat exited 0]" in s, timeout=10)
    assert "What is the plan?" in (tmp_path / "parley" / "chat-history").read_text()
    tmux.start(chat_command(scripted_tools, tmp_path), width=60)
    tmux.wait_for("the prompt", at_prompt, timeout=30)
    tmux.keys("Up")
    tmux.wait_for("the line from the last run", lambda s: s.rstrip().splitlines()[-1] == "you> /quit")
    tmux.keys("Up")
    tmux.wait_for("the line before it", lambda s: s.rstrip().splitlines()[-1] == "you> What is the plan?")
