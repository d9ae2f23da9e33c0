"""Run parley under uvicorn (the `serve` and `demo` commands)."""

from __future__ import annotations

import logging

import uvicorn

from parley.app import create_app
from parley.config import Settings


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_server(settings: Settings, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; running turns are stopped and persisted on the way out."""
    configure_logging(log_level.upper())
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        loop = "asyncio"
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
