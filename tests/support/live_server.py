"""A real uvicorn server for an ASGI app, on an ephemeral loopback port, in a background thread.

In-process ASGI transports buffer streamed bodies, so SSE timing, heartbeats and disconnects are
tested against this instead.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from parley.http_protocol import ParleyConfig
from parley.server import ParleyServer


class LiveServer:
    def __init__(self, app: Any, *, host: str = "127.0.0.1", max_header_bytes: int | None = None) -> None:
        self.app = app
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]
        options: dict[str, Any] = {
            "log_level": "warning",
            "access_log": False,
            "lifespan": "on",
            "timeout_graceful_shutdown": 5,
        }
        if isinstance(app, FastAPI):  # parley as `parley serve` runs it: its HTTP protocol and limits
            limit = {} if max_header_bytes is None else {"max_header_bytes": max_header_bytes}
            self.server: uvicorn.Server = ParleyServer(ParleyConfig(app, **limit, **options), app)
        else:
            self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self.failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced by start()/stop()
            self.failure = exc

    def start(self, timeout: float = 15.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.failure!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=20)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("server did not stop in time")

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
