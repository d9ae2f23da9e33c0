"""SQLite's write lock held by another process: writes wait `PARLEY_DB_POOL_TIMEOUT_SECONDS`, then 503.

A real server on a SQLite file, and a second connection (as another process would hold it: the
CLI, a backup tool) that takes the write lock and keeps it. Both write paths answer 503 with a
message a person understands, nothing is half-written, and everything works once the lock is free.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url

from tests.api.conftest import API, assert_error, create_session
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import ScriptedProvider
from tests.support.sse_client import read_stream

WAIT = 0.5  # PARLEY_DB_POOL_TIMEOUT_SECONDS for these tests


@contextmanager
def write_lock_held(database_url: str) -> Iterator[None]:
    path = make_url(database_url).database
    assert path
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


def test_writes_answer_503_while_another_process_holds_the_write_lock_then_work(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    server = make_server(ScriptedProvider(), PARLEY_DB_POOL_TIMEOUT_SECONDS=str(WAIT))
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with write_lock_held(tenants.database_url):
            started = time.monotonic()
            sent = c.post(f"{API}/sessions/{sid}/messages", json={"content": "Hello"})  # the turn path
            waited = time.monotonic() - started
            body = assert_error(sent, 503, "service_unavailable")
            assert "busy" in body["error"]
            renamed = c.patch(f"{API}/sessions/{sid}", json={"title": "New"})  # the ORM path
            assert "busy" in assert_error(renamed, 503, "service_unavailable")["error"]
        assert waited >= WAIT * 0.9  # it waited for the lock before giving up
        assert c.get(f"{API}/sessions/{sid}").json()["messages"] == []  # the refused turn left nothing
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "Hello"}) as response:
            assert response.status_code == 200
            assert read_stream(response).types[-1] == "done"
        assert c.patch(f"{API}/sessions/{sid}", json={"title": "New"}).status_code == 200
        assert [m["role"] for m in c.get(f"{API}/sessions/{sid}").json()["messages"]] == ["user", "assistant"]
