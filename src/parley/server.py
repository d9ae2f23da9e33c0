"""Run parley under uvicorn (the `serve` and `demo` commands), in one process or several.

`ParleyServer` stops running turns as soon as shutdown begins: uvicorn otherwise waits for open
streams to end before the application's own shutdown runs, so a client would hang until the
graceful timeout and then be cut without `error` or `done`.

With `workers` above one, a small supervisor binds the socket once and runs that many worker
processes on it, each a `ParleyServer` with its own app (its own start-up and shutdown, its own
name on the turn leases it takes), and starts a worker again if one dies. uvicorn's own
multi-process supervisor runs a plain `uvicorn.Server` in each worker, which would lose the
early stop above.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI

from parley.app import create_app
from parley.config import Settings, load_settings
from parley.http_protocol import ParleyConfig

log = logging.getLogger("parley")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ParleyServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI | None = None) -> None:
        super().__init__(config)
        self._parley = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self._parley or _worker_app
        services = getattr(app.state, "services", None) if app is not None else None
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


_worker_app: FastAPI | None = None  # the app of this worker process (`app_from_environment`)


def app_from_environment() -> FastAPI:
    """A worker's app, configured from the environment it inherited (uvicorn's app factory)."""
    global _worker_app
    configure_logging(os.environ.get("PARLEY_LOG_LEVEL", "info").upper())
    _worker_app = create_app(load_settings())
    tune_gc()
    return _worker_app


def _event_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return "asyncio"
    return "uvloop"


def run_server(settings: Settings, host: str, port: int, *, log_level: str = "info", workers: int = 1) -> None:
    """Serve until SIGINT/SIGTERM; running turns are stopped and persisted on the way out."""
    configure_logging(log_level.upper())
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": _event_loop(),
        "max_header_bytes": settings.max_header_bytes,  # ParleyConfig: the httptools protocol with a head limit
        "log_level": log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 15,
    }
    if workers > 1:
        os.environ["PARLEY_LOG_LEVEL"] = log_level  # each worker loads its settings from the environment
        run_workers(ParleyConfig("parley.server:app_from_environment", factory=True, **options), workers)
        return
    app = create_app(settings)
    tune_gc()
    ParleyServer(ParleyConfig(app, **options), app).run()


def _run_worker(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    config.configure_logging()
    ParleyServer(config).run(sockets=sockets)


def run_workers(config: uvicorn.Config, workers: int) -> None:
    """Run `workers` processes on one socket until SIGINT/SIGTERM; a worker that dies is replaced."""
    sock = config.bind_socket()
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_run_worker, args=(config, [sock]), name="parley-worker")
        process.start()
        return process

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    processes = [start() for _ in range(workers)]
    log.info("parley serving with %d workers on %s:%s", workers, config.host, config.port)
    while not stopping.wait(0.5):
        for i, process in enumerate(processes):
            if not process.is_alive():
                log.warning("worker %s exited (code %s); starting another", process.pid, process.exitcode)
                processes[i] = start()
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)  # each stops its turns, then its app
    for process in processes:
        process.join(timeout=20)
        if process.is_alive():
            process.kill()
    sock.close()
