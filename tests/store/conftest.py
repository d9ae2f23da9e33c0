"""The store tests' database, opened as parley opens it (on whichever `database` a module uses)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from parley.store.db import Database
from tests.conftest import Tenants


@pytest.fixture
async def db(tenants: Tenants) -> AsyncIterator[Database]:
    database = Database(tenants.database_url)
    yield database
    await database.dispose()
