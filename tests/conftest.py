"""Shared fixtures: settings, seeded tenants on a real database, real servers on loopback."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI

from parley.app import create_app
from parley.config import Settings, load_settings
from parley.providers.base import Provider
from parley.store import admin
from parley.store.db import Database
from tests.support.live_server import LiveServer
from tests.support.postgres import PostgresCluster
from tests.support.postgres import missing as postgres_missing
from tests.support.redis import RedisServer
from tests.support.redis import missing as redis_missing

# Never talk to anything but loopback, and never pick up a developer's real keys or proxies.
_SCRUBBED = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MCP_LLM_", "PARLEY_", "ANTHROPIC_")) or name in _SCRUBBED or name == "DATABASE_URL":
            monkeypatch.delenv(name, raising=False)


def base_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "MCP_LLM_PROVIDER": "openai-compatible",
        "MCP_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "MCP_LLM_MODEL": "test-model",
        "MCP_LLM_API_KEY": "sk-test-key",
        "MCP_LLM_PRICE_INPUT_PER_M_USD": "3",
        "MCP_LLM_PRICE_OUTPUT_PER_M_USD": "15",
        "PARLEY_DATA_DIR": str(data_dir),
        "PARLEY_HEARTBEAT_SECONDS": "15",
    }
    env.update(overrides)
    return env


@dataclass
class Tenants:
    """Two organizations: A with users a1 and a2, B with user b1; tokens for each case."""

    database_url: str
    org_a: str
    org_b: str
    a1: str  # read-write token of user a1 (org A)
    a2: str  # read-write token of user a2 (org A)
    b1: str  # read-write token of user b1 (org B)
    a1_read_only: str
    a1_revoked: str
    system: str  # system-scope token (user a1)


async def _seed(admin_url: str, app_url: str) -> Tenants:
    db = await admin.open_database(admin_url)
    try:
        org_a = await admin.create_organization(db, "org-a")
        org_b = await admin.create_organization(db, "org-b")
        u_a1 = await admin.create_user(db, org_id=org_a, email="a1@example.test", name="A1")
        u_a2 = await admin.create_user(db, org_id=org_a, email="a2@example.test", name="A2")
        u_b1 = await admin.create_user(db, org_id=org_b, email="b1@example.test", name="B1")
        tok = admin.create_token
        revoked = await tok(db, user_id=u_a1, org_id=org_a, name="old")
        await admin.revoke_token(db, revoked.id)
        return Tenants(
            database_url=app_url,
            org_a=org_a,
            org_b=org_b,
            a1=(await tok(db, user_id=u_a1, org_id=org_a)).token,
            a2=(await tok(db, user_id=u_a2, org_id=org_a)).token,
            b1=(await tok(db, user_id=u_b1, org_id=org_b)).token,
            a1_read_only=(await tok(db, user_id=u_a1, org_id=org_a, can_write=False)).token,
            a1_revoked=revoked.token,
            system=(await tok(db, user_id=u_a1, org_id=None, scope="system")).token,
        )
    finally:
        await db.dispose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis server (Debian's redis-server), destroyed after the test."""
    reason = redis_missing()
    if reason:
        pytest.fail(reason)
    server = RedisServer().start()
    yield server
    server.destroy()


# --- databases -----------------------------------------------------------------------------------

APP_ROLE = "parley_app"
APP_PASSWORD = "app-secret"
TEMPLATE_DB = "parley_template"


@dataclass(frozen=True)
class DatabaseUrls:
    kind: str  # sqlite | postgres
    app: str  # what parley serves with (on PostgreSQL: the RLS-bound application role)
    admin: str  # the owner: migrations and seeding


def migrated_cluster(database: str) -> Iterator[PostgresCluster]:
    """A throwaway cluster with `database` migrated (the app role created); destroyed after."""
    reason = postgres_missing()
    if reason:
        pytest.fail(reason)
    cluster = PostgresCluster().start()
    cluster.psql(f"CREATE DATABASE {database}")

    async def migrate() -> None:
        db = Database(cluster.url(APP_ROLE, database, APP_PASSWORD))
        try:
            await db.migrate(admin_url=cluster.url(database=database))
        finally:
            await db.dispose()

    asyncio.run(migrate())
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    yield from migrated_cluster(TEMPLATE_DB)


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[DatabaseUrls]:
    """A fresh, migrated PostgreSQL database (copied from a migrated template)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield DatabaseUrls("postgres", pg_cluster.url(APP_ROLE, name, APP_PASSWORD), pg_cluster.url(database=name))
    pg_cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def database_of_kind(request: pytest.FixtureRequest, kind: str, data_dir: Path) -> DatabaseUrls:
    """For packages whose `database` fixture is parametrized over both databases."""
    if kind == "postgres":
        pg: DatabaseUrls = request.getfixturevalue("pg_database")
        return pg
    url = f"sqlite+aiosqlite:///{data_dir / 'parley.db'}"
    return DatabaseUrls("sqlite", url, url)


@pytest.fixture
def database(data_dir: Path) -> DatabaseUrls:
    """SQLite by default; test packages that must run on both databases override this fixture."""
    url = f"sqlite+aiosqlite:///{data_dir / 'parley.db'}"
    return DatabaseUrls("sqlite", url, url)


@pytest.fixture
def tenants(database: DatabaseUrls) -> Tenants:
    return asyncio.run(_seed(database.admin, database.app))


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def make_server(data_dir: Path, tenants: Tenants) -> Iterator[ServerFactory]:
    """Start parley (real uvicorn) with a given provider and environment overrides."""
    started: list[LiveServer] = []

    def factory(
        provider: Provider | None = None,
        *,
        app_kwargs: dict[str, Any] | None = None,
        app_hook: Callable[[FastAPI], object] | None = None,
        **env: str,
    ) -> LiveServer:
        env.setdefault("DATABASE_URL", tenants.database_url)
        settings: Settings = load_settings(base_env(data_dir, **env))
        app = create_app(settings, provider=provider, **(app_kwargs or {}))
        if app_hook is not None:
            app_hook(app)  # before the server starts, as a deployment would change it
        server = LiveServer(app, max_header_bytes=settings.max_header_bytes).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def client(server: LiveServer, token: str | None, **kwargs: Any) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx2.Client(base_url=server.url, headers=headers, timeout=kwargs.pop("timeout", 20), **kwargs)
