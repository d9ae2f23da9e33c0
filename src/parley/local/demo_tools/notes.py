"""Notes kept one per line in a JSON Lines file, `notes.jsonl`, in the demo tools' data directory.

A note is appended with a single `write` of one whole line to a file opened with `O_APPEND`, so
two servers sharing the directory never interleave their lines. Reading skips any line that is
not a note (a hand edit, a torn write after a crash) and counts it, rather than failing: one bad
line must not hide every other note. The directory is made if it is missing; nothing is ever
written outside it, and nothing is ever rewritten or deleted.

May import: the standard library and parley.local.demo_tools.errors.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parley.local.demo_tools.errors import DemoToolError

NOTES_FILE = "notes.jsonl"
MAX_TEXT = 4000
MAX_TITLE = 200
MAX_QUERY = 200
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    id: str
    created_at: str  # ISO 8601, UTC, to the second
    title: str | None
    text: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSelection:
    notes: list[Note]  # newest first
    total: int  # how many notes matched, of which `notes` holds at most the limit
    skipped_lines: int  # lines of the file that were not notes


class NoteBook:
    """The notes in `directory`; `clock` gives the creation time of new notes."""

    def __init__(self, directory: Path, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.directory = directory
        self.path = directory / NOTES_FILE
        self._clock = clock

    def add(self, text: str, title: str | None = None) -> Note:
        text = text.strip()
        if not text:
            raise DemoToolError("the note's text is empty")
        if len(text) > MAX_TEXT:
            raise DemoToolError(f"the note's text is {len(text)} characters long; the limit is {MAX_TEXT}")
        title = " ".join(title.split()) if title else None  # a title is one line
        if title is not None and len(title) > MAX_TITLE:
            raise DemoToolError(f"the note's title is {len(title)} characters long; the limit is {MAX_TITLE}")
        note = Note(
            id=secrets.token_hex(4),
            created_at=self._clock().astimezone(UTC).replace(microsecond=0).isoformat(),
            title=title or None,
            text=text,
        )
        self._append(json.dumps(note.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
        return note

    def latest(self, limit: int) -> NoteSelection:
        notes, skipped = self._read()
        return NoteSelection(notes=notes[: _bounded(limit)], total=len(notes), skipped_lines=skipped)

    def search(self, query: str, limit: int) -> NoteSelection:
        wanted = query.strip().casefold()
        if not wanted:
            raise DemoToolError("the search query is empty")
        if len(wanted) > MAX_QUERY:
            raise DemoToolError(f"the search query is {len(wanted)} characters long; the limit is {MAX_QUERY}")
        notes, skipped = self._read()
        found = [note for note in notes if wanted in f"{note.title or ''}\n{note.text}".casefold()]
        return NoteSelection(notes=found[: _bounded(limit)], total=len(found), skipped_lines=skipped)

    def _append(self, line: str) -> None:
        data = line.encode("utf-8")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a torn last line stays one bad line; ours starts afresh
                written = os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DemoToolError(f"could not save the note: {exc.strerror or exc}") from exc
        if written != len(data):
            raise DemoToolError("could not save the note: the disk took only part of it")

    def _read(self) -> tuple[list[Note], int]:
        """Every note, newest first, and the number of lines that were not notes."""
        notes: list[Note] = []
        skipped = 0
        try:
            with self.path.open("rb") as file:
                for raw in file:
                    if not raw.strip():
                        continue
                    note = _parse(raw)
                    if note is None:
                        skipped += 1
                    else:
                        notes.append(note)
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            raise DemoToolError(f"could not read the notes: {exc.strerror or exc}") from exc
        notes.reverse()  # the file is in the order the notes were added
        return notes, skipped


def _parse(raw: bytes) -> Note | None:
    try:
        record = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(record, dict):
        return None
    fields = (record.get("id"), record.get("created_at"), record.get("text"))
    title = record.get("title")
    if not all(isinstance(field, str) for field in fields) or not isinstance(title, str | None):
        return None
    return Note(id=record["id"], created_at=record["created_at"], title=title, text=record["text"])


def _bounded(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise DemoToolError(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
    return limit
