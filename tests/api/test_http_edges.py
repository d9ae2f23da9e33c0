"""HTTP at its edges, on raw sockets where a client library would tidy the request: no redirect to
the client's Host, a cap on the request head, and a deadline for a body that stops arriving."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import orjson
import pytest

from tests.api.conftest import API, Shared, assert_error, create_session
from tests.conftest import DatabaseUrls, ServerFactory, Tenants, client
from tests.support.live_server import LiveServer


@pytest.fixture(scope="module")
def shared_database(tmp_path_factory: pytest.TempPathFactory) -> DatabaseUrls:
    """These edges are the HTTP layer's: SQLite alone is enough."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('edges') / 'parley.db'}"
    return DatabaseUrls("sqlite", url, url)


@pytest.fixture
def database(data_dir: Path) -> DatabaseUrls:
    url = f"sqlite+aiosqlite:///{data_dir / 'parley.db'}"
    return DatabaseUrls("sqlite", url, url)


def exchange(server: LiveServer, raw: bytes, *, wait: float = 5.0) -> tuple[bytes, float]:
    """Send `raw` and read until the server closes the connection or `wait` passes; returns what
    arrived and how long it took."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=wait) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)  # may be refused before all is sent: what it answered is still to be read
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            pass
    return received, time.monotonic() - started


def parse(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, orjson.loads(body) if body else {}


# --- no redirect built from the client's Host --------------------------------------------------------


def _spellings(shared: Shared, sid: str) -> list[str]:
    """Every documented path with and without a trailing slash, and the static mount bare."""
    with shared.client(shared.tenants.a1) as c:
        paths = list(c.get("/openapi.json").json()["paths"])
    concrete = [p.replace("{session_id}", sid) for p in paths]
    return ["/static", "/static/", "/docs/", "/openapi.json/", *concrete, *(p + "/" for p in concrete)]


def test_no_path_redirects_to_the_clients_host(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
    token = shared.tenants.a1
    for path in _spellings(shared, sid):
        for method in ("GET", "POST"):
            raw = (
                f"{method} {path} HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {token}\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n"
            ).encode()
            answer, _ = exchange(shared.server, raw)
            status, headers, _ = parse(answer)
            assert not 300 <= status < 400, (method, path, status, headers)
            assert "location" not in headers, (method, path, headers)
            assert b"evil.example" not in answer, (method, path, answer[:300])


def test_a_trailing_slash_is_a_plain_404_in_the_envelope(shared: Shared) -> None:
    with shared.client(shared.tenants.a1, headers={"Host": "evil.example"}) as c:
        for path in ("/static", f"{API}/sessions/", f"{API}/usage/", "/healthz/"):
            r = c.get(path, headers={"Authorization": f"Bearer {shared.tenants.a1}"})
            assert_error(r, 404, "not_found")


# --- the request head ----------------------------------------------------------------------------------


def _request_with_header(value_bytes: int, *, path: str = "/healthz") -> bytes:
    return (
        (f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: ").encode() + b"a" * value_bytes + b"\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize("size", [20 * 1024, 8 * 1024 * 1024], ids=["20KiB", "8MiB"])
def test_a_head_over_16_kib_is_refused_with_431(shared: Shared, size: int) -> None:
    answer, took = exchange(shared.server, _request_with_header(size))
    status, headers, body = parse(answer)
    assert status == 431, answer[:300]
    assert body["code"] == "header_too_large", body
    assert "16384" in str(body["error"])
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert took < 4


def test_a_long_request_target_counts_as_head(shared: Shared) -> None:
    answer, _ = exchange(shared.server, _request_with_header(10, path="/healthz?" + "q" * 20_000))
    assert parse(answer)[0] == 431, answer[:300]


def test_a_head_just_under_the_limit_is_served(shared: Shared) -> None:
    answer, _ = exchange(shared.server, _request_with_header(15 * 1024))
    status, _, body = parse(answer)
    assert status == 200, answer[:300]
    assert body["status"] == "ok"


def test_the_next_request_on_a_kept_alive_connection_gets_the_whole_limit(shared: Shared) -> None:
    """The count starts again with each request: ten 10 KiB heads in a row on one connection pass."""
    with socket.create_connection((shared.server.host, shared.server.port), timeout=5) as sock:
        for _ in range(10):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10 * 1024 + b"\r\n\r\n")
            answer = b""
            while b'"ok"' not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_the_head_limit_is_configurable(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(PARLEY_MAX_HEADER_BYTES="4096")
    status, _, body = parse(exchange(server, _request_with_header(5000))[0])
    assert (status, body["code"]) == (431, "header_too_large")
    assert "4096" in str(body["error"])
    assert parse(exchange(server, _request_with_header(3000))[0])[0] == 200


# --- a body that stops arriving -----------------------------------------------------------------------


def _half_a_body(token: str, path: str, *, chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b'7\r\n{"conte\r\n'
    return (head + "Content-Length: 100\r\n\r\n").encode() + b'{"content": "only half of wha'


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_shorter_than_announced_is_408_after_the_timeout(
    make_server: ServerFactory, tenants: Tenants, chunked: bool
) -> None:
    server = make_server(PARLEY_BODY_TIMEOUT_SECONDS="0.5")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
    for path in (f"{API}/sessions/{sid}/messages", f"{API}/sessions", f"{API}/sessions/{sid}"):
        answer, took = exchange(server, _half_a_body(tenants.a1, path, chunked=chunked), wait=5)
        status, headers, body = parse(answer)
        assert status == 408, (path, answer[:300])
        assert body == {"error": "The request body did not arrive within 0.5 seconds.", "code": "request_timeout"}
        assert headers["connection"] == "close"
        assert 0.4 < took < 3, took  # answered at the deadline, and the connection closed
    with client(server, tenants.a1) as c:
        assert c.get(f"{API}/sessions/{sid}").json()["messages"] == []
