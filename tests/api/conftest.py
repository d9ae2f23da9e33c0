"""Helpers for the HTTP API tests: a fake clock, frame-by-frame SSE reading, polling, the test DB.

Everything runs against real servers (`make_server` from tests/conftest.py, or the module-scoped
`shared` server here for tests that only need a running API and fresh sessions of their own), and
every test runs twice: on SQLite and on PostgreSQL (as the row-level-security-bound app role).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from parley.app import create_app
from parley.config import load_settings
from parley.store.models import AiMessage, AiSession
from tests.conftest import (
    APP_PASSWORD,
    APP_ROLE,
    TEMPLATE_DB,
    DatabaseUrls,
    ServerFactory,
    Tenants,
    _seed,
    base_env,
    client,
    database_of_kind,
)
from tests.support.inspect_db import in_db
from tests.support.live_server import LiveServer
from tests.support.postgres import PostgresCluster
from tests.support.scripted_provider import ScriptedProvider
from tests.support.sse_client import FrameReader, read_stream

if TYPE_CHECKING:
    from tests.api.tooling import Tools

API = "/api/v1/ai"
T = TypeVar("T")


class FakeClock:
    """An aware-UTC clock the test moves by hand (pass as `create_app(clock=...)`)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(**delta)
            return self._now


# --- requests ------------------------------------------------------------------------------------


def create_session(c: httpx2.Client, **body: Any) -> str:
    r = c.post(f"{API}/sessions", json=body)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def send(c: httpx2.Client, sid: str, content: str = "Hi there", **body: Any) -> Any:
    """POST a message and read its whole SSE answer (or the JSON error body)."""
    with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": content, **body}) as r:
        return read_stream(r)


def detail(c: httpx2.Client, sid: str) -> dict[str, Any]:
    r = c.get(f"{API}/sessions/{sid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def assert_error(r: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the error envelope, exactly `{"error": str, "code": code}`."""
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str), body
    assert body["error"], body
    return body


@contextmanager
def open_turn(c: httpx2.Client, sid: str, content: str = "Hi there", **body: Any) -> Iterator[FrameReader]:
    with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": content, **body}) as r:
        assert r.status_code == 200, r.read()
        yield FrameReader(r)


@contextmanager
def open_events(c: httpx2.Client, sid: str, last_event_id: str | None = None) -> Iterator[FrameReader]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with c.stream("GET", f"{API}/sessions/{sid}/events", headers=headers) as r:
        assert r.status_code == 200, r.read()
        yield FrameReader(r)


def wait_until(fn: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.02) -> T:
    """Poll `fn` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


# --- the database, directly (through parley's own engine, so any dialect works) ----------------------


def _in_db(tenants: Tenants, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    return in_db(tenants.database_url, work)


def session_row(tenants: Tenants, sid: str) -> AiSession:
    async def work(s: AsyncSession) -> AiSession:
        return (await s.execute(sa.select(AiSession).where(AiSession.id == sid))).scalar_one()

    return _in_db(tenants, work)


def insert_message(tenants: Tenants, sid: str, *, role: str, parts: list[dict[str, Any]] | None) -> None:
    async def work(s: AsyncSession) -> None:
        s.add(
            AiMessage(
                id=str(uuid.uuid4()),
                session_id=sid,
                role=role,
                content=None,
                content_parts=parts,
                usage_estimated=False,
                created_at=datetime.now(UTC),
            )
        )

    _in_db(tenants, work)


def insert_history(tenants: Tenants, sid: str, pairs: int, *, text: str = "earlier message") -> None:
    """A long stored conversation (user/assistant pairs, in the past), in one transaction."""

    async def work(s: AsyncSession) -> None:
        start = datetime.now(UTC) - timedelta(minutes=30)
        rows = [
            {
                "id": str(uuid.uuid4()),
                "session_id": sid,
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"{text} {i}",
                "content_parts": None,
                "usage_estimated": False,
                "created_at": start + timedelta(microseconds=i),
            }
            for i in range(2 * pairs)
        ]
        await s.execute(sa.insert(AiMessage), rows)

    _in_db(tenants, work)


# --- a module-scoped server for tests that only need a running API ---------------------------------


@dataclass
class Shared:
    server: LiveServer
    tenants: Tenants
    provider: ScriptedProvider

    def client(self, token: str | None, *, headers: dict[str, str] | None = None) -> httpx2.Client:
        if headers is not None:
            return httpx2.Client(base_url=self.server.url, headers=headers, timeout=20)
        return client(self.server, token)


DATABASES = ["sqlite", "postgres"]


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, data_dir: Path) -> DatabaseUrls:
    """Overrides the root fixture: the API suite runs on both databases."""
    return database_of_kind(request, request.param, data_dir)


@pytest.fixture(scope="module", params=DATABASES)
def shared_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseUrls]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('shared') / 'parley.db'}"
        yield DatabaseUrls("sqlite", url, url)
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = f"m_{uuid.uuid4().hex[:12]}"
    cluster.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield DatabaseUrls("postgres", cluster.url(APP_ROLE, name, APP_PASSWORD), cluster.url(database=name))
    cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, shared_database: DatabaseUrls) -> Iterator[Shared]:
    data_dir: Path = tmp_path_factory.mktemp("shared") / "data"
    url = shared_database.app
    tenants = asyncio.run(_seed(shared_database.admin, url))
    provider = ScriptedProvider()
    settings = load_settings(base_env(data_dir, DATABASE_URL=url))
    server = LiveServer(create_app(settings, provider=provider)).start()
    try:
        yield Shared(server=server, tenants=tenants, provider=provider)
    finally:
        server.stop()


@pytest.fixture
def tools(make_server: ServerFactory, tenants: Tenants, tmp_path: Path) -> Tools:
    """parley's tool world: the test MCP server, configured; start parley with `tools.start()`."""
    from tests.api.tooling import tool_world  # it imports this module

    return tool_world(make_server, tenants, tmp_path)
