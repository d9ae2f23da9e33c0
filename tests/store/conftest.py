from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from parley.store.db import Database
from tests.support.postgres import PostgresCluster, missing

APP_ROLE = "parley_app"
APP_PASSWORD = "app-secret"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    reason = missing()
    if reason:
        pytest.fail(reason)
    cluster = PostgresCluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[tuple[str, str]]:
    """A freshly migrated database: (app URL, admin URL)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.psql(f"CREATE DATABASE {name}")
    admin_url = pg_cluster.url(database=name)
    app_url = pg_cluster.url(APP_ROLE, name, APP_PASSWORD)

    async def migrate() -> None:
        db = Database(app_url)
        try:
            await db.migrate(admin_url=admin_url)
        finally:
            await db.dispose()

    asyncio.run(migrate())
    yield app_url, admin_url
    pg_cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")
