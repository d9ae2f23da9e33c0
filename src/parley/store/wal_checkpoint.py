"""The server's WAL checkpoints, on a thread of their own instead of inside a turn's COMMIT.

By default SQLite checkpoints in the connection whose COMMIT takes the WAL past 1,000 pages: that
COMMIT copies the pages back into the database file and syncs both files, several milliseconds
during which the event loop (where parley's statements run, `sqlite_inline.py`) serves nobody.
So the server's connections turn automatic checkpoints off (`PRAGMA wal_autocheckpoint=0`) and
this thread runs a PASSIVE checkpoint every `interval` seconds on its own connection. PASSIVE
never waits for readers or writers; `sqlite3` releases the GIL while SQLite works, so the copy
runs beside the loop. Other processes (the CLI) keep SQLite's default.

Imports: standard library only.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("parley.store")
LARGE_WAL_PAGES = 100_000  # ~400 MB: checkpoints are not keeping up (a reader that never ends?)


class WalCheckpointer:
    __slots__ = ("_interval", "_path", "_stop", "_thread")

    def __init__(self, path: str, *, interval: float = 0.25) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parley-wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the checkpoint in progress, if any (the last connection's close checkpoints too)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One PASSIVE checkpoint: (pages in the WAL, pages copied back)."""
        _busy, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return wal_pages, copied

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        warned = False
        try:
            while not self._stop.wait(self._interval):
                try:
                    wal_pages, _ = self.checkpoint(conn)
                except sqlite3.Error as exc:
                    if not warned:
                        log.warning("WAL checkpoint failed (%s); will keep trying", exc)
                    warned = True
                    continue
                if wal_pages > LARGE_WAL_PAGES and not warned:
                    log.warning("the WAL holds %d pages; a long reader may be holding checkpoints back", wal_pages)
                    warned = True
        finally:
            conn.close()
