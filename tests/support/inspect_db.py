"""Read and write a test database directly, with SQLAlchemy's ORM, as an observer outside parley.

Tests use this to check what parley stored (or to plant rows it would not write itself). It is
deliberately not parley's own data layer: a second, independent reader of the same tables.
On PostgreSQL the work runs with system scope, so row-level security shows every tenant's rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

T = TypeVar("T")


async def in_db_async(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    engine = create_async_engine(url)
    try:
        async with async_sessionmaker(engine, expire_on_commit=False)() as session, session.begin():
            if engine.dialect.name == "postgresql":
                await session.execute(text("SELECT set_config('parley.scope', 'system', true)"))
            return await work(session)
    finally:
        await engine.dispose()


def in_db(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    return asyncio.run(in_db_async(url, work))
