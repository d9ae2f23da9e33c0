"""nginx in front of two loopback backends: round robin, forwarded headers, streams passed through
as they are written, and no buffering of responses or request bodies.

The backends are the standard library's HTTP server in threads. They send no
`X-Accel-Buffering` header, so what is seen here is the balancer's own configuration.

nginx passes a chunk on as soon as it reads it even with response buffering on, so a stream
arriving in pieces does not tell the two settings apart; what does is a client that stops
reading: unbuffered, nginx stops reading the backend too and the backend is held back.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest

from tests.support.nginx import PROXY_DIRECTIVES, NginxBalancer
from tests.support.nginx import missing as nginx_missing

FIRST_FRAME = b"event: content_delta\ndata: first\n\n"
SECOND_FRAME = b"event: message_end\ndata: second\n\n"
PAUSE_SECONDS = 1.0
# More than every socket buffer between the backend and a client that reads nothing can hold
# (Linux grows a receive buffer up to 32 MiB by default), so only a buffering nginx takes it all.
LARGE_BODY_BYTES = 64 << 20
SMALL_SOCKET_BUFFER = 64 << 10


class Backend(ThreadingHTTPServer):
    """A named HTTP/1.1 server on a free loopback port that records what it did for the tests."""

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), BackendHandler)
        self.name = name
        self.second_frame_written_at: float | None = None
        self.large_bytes_written = 0
        self.large_body_finished = False
        self.upload_arrived = threading.Event()
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
        elif self.path == "/large":
            self._large()
        else:
            self._json({"backend": self.server.name, "x_forwarded_for": self.headers.get("X-Forwarded-For")})

    def do_POST(self) -> None:
        # Set before the body is read: nginx forwarded the request while its body was still coming.
        self.server.upload_arrived.set()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._json({"backend": self.server.name, "received": len(body)})

    def _json(self, payload: dict[str, object]) -> None:
        body = json.dumps(payload).encode()
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

    def _large(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(LARGE_BODY_BYTES))
        self.end_headers()
        block = b"x" * SMALL_SOCKET_BUFFER
        try:
            while self.server.large_bytes_written < LARGE_BODY_BYTES:
                self.wfile.write(block)
                self.server.large_bytes_written += len(block)
            self.wfile.flush()
            self.server.large_body_finished = True
        except OSError:
            self.close_connection = True  # the client went away: the test is over

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


def _connect(balancer: NginxBalancer) -> socket.socket:
    """A raw client connection with a small, fixed receive buffer (no automatic growth)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", balancer.port))
    return sock


def test_requests_alternate_between_backends(balancer: NginxBalancer) -> None:
    with httpx2.Client(base_url=balancer.url, timeout=10) as client:
        answers = [client.get("/who").json() for _ in range(6)]

    served_by = [answer["backend"] for answer in answers]
    assert sorted(set(served_by)) == ["a", "b"]
    assert all(earlier != later for earlier, later in itertools.pairwise(served_by)), served_by
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
    # Held back anywhere on the way, the first frame would come out together with the second.
    assert first_arrived_at < written_at - PAUSE_SECONDS / 2, (first_arrived_at, written_at)


def test_a_client_that_stops_reading_holds_the_backend_back(balancer: NginxBalancer, backends: list[Backend]) -> None:
    with _connect(balancer) as sock:
        sock.sendall(b"GET /large HTTP/1.1\r\nHost: parley.test\r\n\r\n")
        # The client reads nothing. A buffering nginx would take the whole body from the backend
        # (into memory and temporary files) in a fraction of this time.
        time.sleep(1.0)
        written = sum(backend.large_bytes_written for backend in backends)
        finished = any(backend.large_body_finished for backend in backends)

    assert written > 0, "the request never reached a backend"
    assert not finished, f"the backend wrote all {LARGE_BODY_BYTES} bytes to a client that read none"
    assert written < LARGE_BODY_BYTES


def test_a_request_body_is_forwarded_as_it_arrives(balancer: NginxBalancer, backends: list[Backend]) -> None:
    half = b"x" * 1024
    with _connect(balancer) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: parley.test\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (2 * len(half), half)
        )
        deadline = time.monotonic() + 2
        while not any(backend.upload_arrived.is_set() for backend in backends) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(backend.upload_arrived.is_set() for backend in backends), (
            "no backend saw the request while half its body was still to come"
        )
        sock.sendall(half)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body)["received"] == 2 * len(half)


def test_the_deploy_guide_shows_the_tested_directives() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    config = guide.split("```nginx\n", 1)[1].split("```", 1)[0]
    location = config.split("location / {", 1)[1].split("}", 1)[0]
    shown = [line.strip() for line in location.splitlines() if line.strip() and not line.strip().startswith("#")]

    assert shown == list(PROXY_DIRECTIVES)
    assert "keepalive 16;" in config
