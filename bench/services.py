"""The services some parley targets stand on: a throwaway PostgreSQL cluster and Redis server.

Both are the test suite's own starters (`tests/support/postgres.py`, `tests/support/redis.py`): one
cluster and one Redis per run, on loopback, destroyed at the end. Each PostgreSQL target gets its
own database, migrated the way the tests migrate (the owner runs the migration and grants the
application role, which parley then serves as, so row-level security applies) and checked with
parley's own role check before anything is measured.

What they cost is measured around each timed part, like the server's CPU:

- **CPU** from /proc: every process of the cluster (the postmaster and its children, backends that
  exited meanwhile included), or the Redis server's process.
- **Statements** from `pg_stat_statements` (preloaded and created on the throwaway cluster): the
  top-level statements the application role ran in the target's database, `BEGIN` and `COMMIT`
  and background work included, as calls. Nearly one round trip each, except asyncpg's reset of
  a connection on release: four statements in one round trip.
- **Memory** of Redis from `INFO memory` (`used_memory`).

Imports: standard library, the tests' starters, parley's store (migration and role check).
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from tests.support.postgres import PostgresCluster
from tests.support.redis import RedisServer

from bench.procs import cpu_seconds, tree_cpu_seconds
from parley.store.db import Database
from parley.store.postgres import app_role_problems
from parley.store.tenancy import Tenant

APP_ROLE = "parley_app"
APP_PASSWORD = "bench-app-secret"
_STATEMENTS = (
    "SELECT coalesce(sum(s.calls), 0), coalesce(sum(s.calls) FILTER (WHERE s.query ILIKE 'begin%'), 0) "
    "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid "
    "WHERE d.datname = '{database}' AND r.rolname = '{role}'"
)
_TOP = (
    "SELECT s.calls, round((s.total_exec_time / s.calls)::numeric, 3), "
    "regexp_replace(left(s.query, 120), '\\s+', ' ', 'g') "
    "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid "
    "WHERE d.datname = '{database}' AND r.rolname = '{role}' ORDER BY s.calls DESC LIMIT 12"
)


class Meter(Protocol):
    """Something measured over a timed part: `start()` just before it, `stop()` just after."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, Any]: ...


class Postgres:
    """The run's cluster; `database()` makes a migrated, role-checked database for one target."""

    def __init__(self, stack: ExitStack) -> None:
        self.cluster = PostgresCluster()
        stack.callback(self.cluster.destroy)
        self.cluster.start()
        self.statements = self._enable_statements()

    def _enable_statements(self) -> bool:
        found = self.cluster.psql("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
        if found != "1":
            print("pg_stat_statements is not installed: no PostgreSQL statement counts", file=sys.stderr)
            return False
        self.cluster.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        self.cluster.stop()
        self.cluster.resume()
        self.cluster.psql("CREATE EXTENSION pg_stat_statements")
        return True

    @property
    def postmaster(self) -> int:
        return int((self.cluster.data / "postmaster.pid").read_text().split()[0])

    def database(self, name: str) -> tuple[str, str]:
        """(parley's URL as the application role, the owner's URL) of a new migrated database."""
        self.cluster.psql(f"CREATE DATABASE {name}")
        app_url = self.cluster.url(APP_ROLE, name, APP_PASSWORD)
        owner_url = self.cluster.url(database=name)

        async def migrate() -> list[str]:
            db = Database(app_url)
            try:
                await db.migrate(admin_url=owner_url)
                async with db.unit(Tenant.system(), readonly=True) as tx:
                    return await app_role_problems(tx)
            finally:
                await db.dispose()

        problems = asyncio.run(migrate())
        if problems:
            raise RuntimeError(f"row-level security would not apply on {name}: {'; '.join(problems)}")
        return app_url, owner_url

    def meter(self, database: str) -> PostgresMeter:
        return PostgresMeter(self, database)


class PostgresMeter:
    """The cluster's CPU and one database's statements over a timed part."""

    def __init__(self, postgres: Postgres, database: str) -> None:
        self.postgres = postgres
        self.database = database
        self._cpu = 0.0

    def _query(self, sql: str) -> str:
        return self.postgres.cluster.psql(sql.format(database=self.database, role=APP_ROLE))

    def start(self) -> None:
        if self.postgres.statements:
            self.postgres.cluster.psql("SELECT pg_stat_statements_reset()")
        self._cpu = tree_cpu_seconds(self.postgres.postmaster)

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pg_cpu_s": tree_cpu_seconds(self.postgres.postmaster) - self._cpu}
        if self.postgres.statements:
            calls, begins = self._query(_STATEMENTS).split("|")
            out.update(pg_statements=int(calls), pg_transactions=int(begins))
            top = [line.split("|", 2) for line in self._query(_TOP).splitlines()]
            # Mean time in the server, lock waits included: a hot row shows up here.
            out["pg_top_statements"] = [[int(calls), float(mean_ms), query] for calls, mean_ms, query in top]
        return out


class Redis:
    """The run's Redis server."""

    def __init__(self, stack: ExitStack) -> None:
        self.server = RedisServer()
        stack.callback(self.server.destroy)
        self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log(self) -> Path:
        return self.server.log

    def used_memory(self) -> int:
        info = self.server.command("INFO", "memory")
        assert isinstance(info, bytes), info
        for line in info.decode().splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("INFO memory has no used_memory")

    def meter(self) -> RedisMeter:
        return RedisMeter(self)


class RedisMeter:
    """The Redis server's CPU over a timed part."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._cpu = 0.0

    def _now(self) -> float:
        process = self.redis.server.process
        assert process is not None
        return cpu_seconds([process.pid])

    def start(self) -> None:
        self._cpu = self._now()

    def stop(self) -> dict[str, Any]:
        return {"redis_cpu_s": self._now() - self._cpu}
