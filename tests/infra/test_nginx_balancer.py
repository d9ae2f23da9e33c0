"""nginx in front of two loopback backends: round robin, forwarded headers, unbuffered streams.

The backends are the standard library's HTTP server in threads. The streaming one sends no
`X-Accel-Buffering` header, so a stream that arrives in pieces proves the balancer's own
configuration turns buffering off.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from tests.support.nginx import NginxBalancer
from tests.support.nginx import missing as nginx_missing

FIRST_FRAME = b"event: content_delta\ndata: first\n\n"
SECOND_FRAME = b"event: message_end\ndata: second\n\n"
PAUSE_SECONDS = 1.0


class Backend(ThreadingHTTPServer):
    """A named HTTP/1.1 server on a free loopback port; remembers when it wrote each stream's second frame."""

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), BackendHandler)
        self.name = name
        self.second_frame_written_at: float | None = None
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=f"backend:{name}", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def start(self) -> Backend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class BackendHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that nginx's upstream keep-alive connections are kept.
    protocol_version = "HTTP/1.1"
    server: Backend

    def do_GET(self) -> None:
        if self.path == "/stream":
            self._stream()
            return
        body = json.dumps(
            {"backend": self.server.name, "x_forwarded_for": self.headers.get("X-Forwarded-For")}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(FIRST_FRAME)
        time.sleep(PAUSE_SECONDS)
        self.server.second_frame_written_at = time.monotonic()
        self._chunk(SECOND_FRAME)
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output is for failures


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend("a").start(), Backend("b").start()]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def balancer(backends: list[Backend]) -> Iterator[NginxBalancer]:
    reason = nginx_missing()
    if reason:
        pytest.fail(reason)
    nginx = NginxBalancer([backend.address for backend in backends]).start()
    yield nginx
    nginx.destroy()


def test_requests_alternate_between_backends(balancer: NginxBalancer) -> None:
    with httpx2.Client(base_url=balancer.url, timeout=10) as client:
        answers = [client.get("/who").json() for _ in range(6)]

    served_by = [answer["backend"] for answer in answers]
    assert sorted(set(served_by)) == ["a", "b"]
    assert all(earlier != later for earlier, later in zip(served_by, served_by[1:], strict=False)), served_by
    assert {answer["x_forwarded_for"] for answer in answers} == {"127.0.0.1"}


def test_a_stream_reaches_the_client_in_pieces(balancer: NginxBalancer, backends: list[Backend]) -> None:
    arrivals: list[tuple[float, bytes]] = []
    with (
        httpx2.Client(base_url=balancer.url, timeout=10) as client,
        client.stream("GET", "/stream") as response,
    ):
        assert response.status_code == 200
        for piece in response.iter_raw():
            arrivals.append((time.monotonic(), piece))

    assert b"".join(piece for _, piece in arrivals) == FIRST_FRAME + SECOND_FRAME
    first_arrived_at, first_piece = arrivals[0]
    assert first_piece == FIRST_FRAME
    [written_at] = [b.second_frame_written_at for b in backends if b.second_frame_written_at is not None]
    # Buffered, the first frame would come out together with the second, not a pause ahead of it.
    assert first_arrived_at < written_at - PAUSE_SECONDS / 2, (first_arrived_at, written_at)
