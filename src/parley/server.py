"""Run parley under uvicorn (the `serve` and `demo` commands), in one process or several.

`ParleyServer` stops running turns as soon as shutdown begins: uvicorn otherwise waits for open
streams to end before the application's own shutdown runs, so a client would hang until the
graceful timeout and then be cut without `error` or `done`.

With `workers` above one, a small supervisor binds the socket once and runs that many worker
processes on it, each a `ParleyServer` with its own app (its own start-up and shutdown, its own
name on the turn leases it takes), and starts a worker again if one dies. uvicorn's own
multi-process supervisor runs a plain `uvicorn.Server` in each worker, which would lose the
early stop above.

Metrics (`parley.metrics`): the supervisor gives its workers one `PROMETHEUS_MULTIPROC_DIR` (a
fresh directory of its own unless the operator set one, emptied at start), so each worker counts
in its files and a scrape adds them up; a worker that dies is marked dead (its live gauges stop
counting). `PARLEY_METRICS_ADDRESS` is served by the process that owns the API's port: the only
one, or the supervisor. Log lines are text or JSON (`parley.logs`); uvicorn gets no logging
configuration of its own, so its lines take the same format.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from parley import metrics
from parley.app import create_app
from parley.config import Settings, load_settings
from parley.http_protocol import ParleyConfig
from parley.logs import configure_logging

log = logging.getLogger("parley")


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
    settings = load_settings()
    configure_logging(os.environ.get("PARLEY_LOG_LEVEL", "info").upper(), settings.log_format)
    _worker_app = create_app(settings)
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
    configure_logging(log_level.upper(), settings.log_format)
    listen = settings.metrics_listen
    if listen is not None and listen[1] == port:
        raise SystemExit(f"parley: PARLEY_METRICS_ADDRESS must not be the API's port ({port})")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": _event_loop(),
        "max_header_bytes": settings.max_header_bytes,  # ParleyConfig: the httptools protocol with a head limit
        "log_level": log_level,
        "access_log": False,
        "log_config": None,  # uvicorn's lines go through parley's handler (text or JSON)
        "timeout_graceful_shutdown": 15,
    }
    if workers > 1:
        os.environ["PARLEY_LOG_LEVEL"] = log_level  # each worker loads its settings from the environment
        with metrics_directory(), _metrics_served(listen):
            run_workers(ParleyConfig("parley.server:app_from_environment", factory=True, **options), workers)
        return
    app = create_app(settings)
    tune_gc()
    with _metrics_served(listen):
        ParleyServer(ParleyConfig(app, **options), app).run()


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """The workers' `PROMETHEUS_MULTIPROC_DIR`: the operator's (emptied of old files), or a new
    one, removed afterwards. Set in this process's environment, which the workers inherit."""
    given = os.environ.get(metrics.MULTIPROC_DIR)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="parley-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):  # counts of an earlier run would add to this one's
        old.unlink()
    os.environ[metrics.MULTIPROC_DIR] = str(path)
    try:
        yield path
    finally:
        if not given:
            os.environ.pop(metrics.MULTIPROC_DIR, None)
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _metrics_served(listen: tuple[str, int] | None) -> Iterator[None]:
    stop: Callable[[], None] | None = None
    if listen is not None:
        stop = metrics.serve(*listen)
        log.info("metrics on http://%s:%d/metrics", *listen)
    try:
        yield
    finally:
        if stop is not None:
            stop()


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
                if process.pid is not None:
                    metrics.process_exited(process.pid)
                processes[i] = start()
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)  # each stops its turns, then its app
    for process in processes:
        process.join(timeout=20)
        if process.is_alive():
            process.kill()
    sock.close()
