"""`parley chat` driven like a person would, in a real terminal (tmux), against the real model.

tmux gives the client a pty, so Ctrl-C is a real SIGINT from the terminal and what we assert is
what a user would see on screen. The tmux server runs on a private socket and is killed at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E

pytestmark = pytest.mark.e2e


class Tmux:
    def __init__(self, socket_name: str) -> None:
        self.socket_name = socket_name

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
    term = Tmux(f"parley-e2e-{os.getpid()}")
    yield term
    subprocess.run(["tmux", "-L", term.socket_name, "kill-server"], capture_output=True, check=False)


def after(screen: str, marker: str) -> str:
    """What the screen shows after the last occurrence of `marker`."""
    index = screen.rfind(marker)
    return screen[index + len(marker) :] if index >= 0 else ""


def at_prompt(screen: str) -> bool:
    lines = [line for line in screen.splitlines() if line.strip()]
    return bool(lines) and lines[-1].rstrip() == "you>"


@pytest.mark.timeout(150)
def test_chat_answers_stops_on_ctrl_c_and_shows_history(e2e: E2E, tmux: Tmux, tmp_path: Path) -> None:
    client = [sys.executable, "-m", "parley", "chat", "--url", e2e.parley.url, "--token", e2e.token]
    env = ["env", f"XDG_STATE_HOME={tmp_path}", "TERM=xterm"]
    # tmux runs this through sh; the echo leaves the client's exit status on screen.
    command = shlex.join(env + client) + '; echo "[chat exited $?]"'
    # remain-on-exit keeps the pane, and so that status line, after the shell ends.
    tmux("new-session", "-d", "-s", "chat", "-x", "200", "-y", "50", command, ";",
         "set-option", "-g", "remain-on-exit", "on")  # fmt: skip
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
