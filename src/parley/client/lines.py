"""How `parley chat` reads what a person types.

In a terminal: prompt_toolkit, with line editing and a history that Up and Down walk, kept across
runs in `$XDG_DATA_HOME/parley/chat-history` (`~/.local/share/parley/`, beside parley's own data).
Answers to questions (approve? why not?) stay out of that history. Anywhere else (input piped
in), plain `input()`, so a script can drive the client.

Reading raises KeyboardInterrupt on Ctrl-C and EOFError on Ctrl-D or the end of the input.

May import: the standard library and prompt_toolkit.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory


class LineReader(Protocol):
    def read(self, prompt: str) -> str:
        """A line for the chat (kept in the history)."""
        ...

    def ask(self, prompt: str) -> str:
        """An answer to a question (not kept)."""
        ...


def history_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "parley" / "chat-history"


class QuietFileHistory(FileHistory):
    """A history file that is a convenience: one that cannot be read or written is left alone."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path

    def load_history_strings(self) -> Iterable[str]:
        try:
            return list(super().load_history_strings())
        except OSError:
            return []

    def store_string(self, string: str) -> None:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            super().store_string(string)


class TerminalLines:
    """prompt_toolkit: line editing, and the history in `path`."""

    def __init__(self, path: Path) -> None:
        history: History = QuietFileHistory(path)
        self.chat: PromptSession[str] = PromptSession(history=history)
        self.questions: PromptSession[str] = PromptSession(history=InMemoryHistory())

    def read(self, prompt: str) -> str:
        return self.chat.prompt(prompt)

    def ask(self, prompt: str) -> str:
        return self.questions.prompt(prompt)


class PlainLines:
    """`input()`: for input that is not a terminal."""

    def read(self, prompt: str) -> str:
        return input(prompt)

    def ask(self, prompt: str) -> str:
        return input(prompt)


def line_reader() -> LineReader:
    if sys.stdin.isatty() and sys.stdout.isatty():
        return TerminalLines(history_path())
    return PlainLines()
