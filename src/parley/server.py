"""Run parley under uvicorn (the `serve` and `demo` commands).

`ParleyServer` stops running turns as soon as shutdown begins: uvicorn otherwise waits for open
streams to end before the application's own shutdown runs, so a client would hang until the
graceful timeout and then be cut without `error` or `done`.
"""

from __future__ import annotations

import gc
import logging
import socket

import uvicorn
from fastapi import FastAPI

from parley.app import create_app
from parley.config import Settings


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ParleyServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._parley = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        services = getattr(self._parley.state, "services", None)
        if services is not None:
            # Running turns persist what they have and tell their streams (error + done).
            await services.sessions.shutdown()
        await super().shutdown(sockets=sockets)


def tune_gc() -> None:
    """Keep the cyclic GC off the hot path.

    Everything allocated while starting (modules, SQLAlchemy and FastAPI metadata: ~100,000
    objects) is frozen out of the collector, so a full collection no longer walks it; and
    collections start after 10,000 new container objects instead of 700. Reference counting still
    frees non-cyclic garbage at once; only cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def run_server(settings: Settings, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; running turns are stopped and persisted on the way out."""
    configure_logging(log_level.upper())
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        loop = "asyncio"
    app = create_app(settings)
    tune_gc()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    ParleyServer(config, app).run()
