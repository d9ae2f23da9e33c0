"""How `parley chat` reads lines (`parley.client.lines`): the history file, and input that is not a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.client.lines import PlainLines, QuietFileHistory, history_path, line_reader


def test_the_history_is_kept_in_a_file_and_read_back_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "parley" / "chat-history"  # the directory is made when the first line is kept
    QuietFileHistory(path).store_string("first")
    QuietFileHistory(path).store_string("second")
    assert list(QuietFileHistory(path).load_history_strings()) == ["second", "first"]


def test_a_history_file_that_cannot_be_written_or_read_is_left_alone(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    history = QuietFileHistory(blocker / "chat-history")
    history.store_string("kept nowhere")  # no error: the chat goes on without a history
    assert list(history.load_history_strings()) == []
    unreadable = QuietFileHistory(tmp_path)  # a directory where the file should be
    assert list(unreadable.load_history_strings()) == []


def test_the_history_lives_beside_parleys_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert history_path() == tmp_path / "parley" / "chat-history"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert history_path() == Path.home() / ".local" / "share" / "parley" / "chat-history"


def test_input_that_is_not_a_terminal_is_read_plainly() -> None:
    assert isinstance(line_reader(), PlainLines)  # pytest's stdin is not a terminal
