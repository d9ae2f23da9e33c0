"""The operator's routes: `/healthz` (liveness), `/readyz` (readiness), and `/metrics` on the API's
port when `PARLEY_METRICS_TOKEN` is set (behind that token; `PARLEY_METRICS_ADDRESS` serves it on
an address of its own instead, `server.py`). None of them is under /api/v1/ai.

`/healthz` says the process serves; `/readyz` that it can serve turns.

`/readyz` answers 200 only when the database answers (within `DB_TIMEOUT`), its schema is at the
revision this version needs, and the model server answered the last probe (`Provider.probe`, at
most one every `PROBE_EVERY` seconds whatever the number of callers: a load balancer polling every
second must not become load on the model server). Otherwise 503 `not_ready` with the reasons.
A process that is not ready keeps serving what it can; it is the balancer's to route around it.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request, Response

from parley import __version__, metrics
from parley.errors import AuthenticationError, NotReadyError, ServiceUnavailableError
from parley.providers.base import Provider
from parley.store.db import Database, head_revision

PROBE_EVERY = 10.0  # seconds between two probes of the model server
DB_TIMEOUT = 3.0  # seconds /readyz waits for the database

router = APIRouter(tags=["health"])


class Readiness:
    """What `/readyz` checks; the model server's probe is cached (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        provider: Provider,
        *,
        probe_every: float = PROBE_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.provider = provider
        self.probe_every = probe_every
        self.clock = clock
        self._probed_at: float | None = None
        self._model_problem: str | None = None
        self._probing = asyncio.Lock()

    async def problems(self) -> list[str]:
        """Why parley cannot serve turns now (empty: it can)."""
        problems = [problem for problem in (await self._database(), await self._model()) if problem]
        return problems

    async def _database(self) -> str | None:
        try:
            async with asyncio.timeout(DB_TIMEOUT):
                revision = await self.db.schema_revision()
        except (ServiceUnavailableError, TimeoutError):
            return "the database is unavailable"
        needed = head_revision()
        if revision != needed:
            return f"the database schema is at revision {revision or 'none'}, this version needs {needed}"
        return None

    async def _model(self) -> str | None:
        async with self._probing:  # one probe at a time; the others wait for its answer
            if self._probed_at is None or self.clock() - self._probed_at >= self.probe_every:
                self._model_problem = await self.provider.probe()
                self._probed_at = self.clock()
        return self._model_problem


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (nothing else is checked)."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, Any]:
    """Readiness: the database answers at the right schema and the model server is reachable."""
    readiness: Readiness = request.app.state.services.readiness
    problems = await readiness.problems()
    if problems:
        raise NotReadyError(problems)
    return {"status": "ready", "version": __version__}


def install_metrics_route(app: FastAPI, token: str) -> None:
    """`GET /metrics` in Prometheus's text format, for a scraper sending `Authorization: Bearer
    <token>` (401 for anyone else). Not in the OpenAPI document: it is not part of the API."""
    expected = token.strip().encode()

    @app.get("/metrics", include_in_schema=False)
    async def scrape(authorization: Annotated[str | None, Header()] = None) -> Response:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
            raise AuthenticationError("A valid metrics token is required.")
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
