"""A loopback TCP proxy for tests: forwards bytes both ways as they arrive, keeps what clients sent,
and cuts every open connection on demand, as a flaky network does.

    client ──▶ TcpProxy (127.0.0.1:port) ──▶ 127.0.0.1:target_port

What clients sent is how a test sees the requests a server without a request log received
(`chat_requests()`); `cut()` is how a test breaks a stream in the middle. Bytes are never changed
or held back. Threads, not asyncio: the callers are synchronous tests (httpx2, a browser), and the
proxy must keep forwarding while the test thread blocks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class _Connection:
    """One proxied connection: both sockets, what the client sent, how many directions still flow."""

    __slots__ = ("client", "flowing", "sent", "target")

    def __init__(self, client: socket.socket, target: socket.socket) -> None:
        self.client, self.target = client, target
        self.sent = bytearray()
        self.flowing = 2


class TcpProxy:
    """Listens on `127.0.0.1:<port>` and forwards each connection to `127.0.0.1:<target_port>`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open: list[_Connection] = []
        self._sent: list[bytearray] = []  # per connection, in order of connection; kept after it ends
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="tcp-proxy", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was shut down
            try:
                target = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                # The target is down: reset the client, the nearest a proxy gets to "refused".
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                client.close()
                continue
            target.settimeout(None)
            connection = _Connection(client, target)
            with self._lock:
                if self._closed:
                    client.close()
                    target.close()
                    return
                self._open.append(connection)
                self._sent.append(connection.sent)
                self._start(self._pipe, connection, client, target, connection.sent)
                self._start(self._pipe, connection, target, client, None)

    def _pipe(
        self, connection: _Connection, source: socket.socket, sink: socket.socket, record: bytearray | None
    ) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    record.extend(data)
                sink.sendall(data)
        except OSError:
            # A reset, or a cut: end the other direction too, or its reader would wait forever.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        else:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the end of the stream on; the other way goes on
        with self._lock:
            connection.flowing -= 1
            if connection.flowing or connection not in self._open:
                return
            self._open.remove(connection)
        connection.client.close()
        connection.target.close()

    def cut(self) -> int:
        """Shut down and close every open connection at once; returns how many there were."""
        with self._lock:
            cut, self._open = self._open, []
        for connection in cut:
            for sock in (connection.client, connection.target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(cut)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)

    def sent(self) -> list[bytes]:
        """What clients sent so far, one entry per connection, in order of connection."""
        with self._lock:
            return [bytes(record) for record in self._sent]

    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every POST …/chat/completions sent so far, in order of connection."""
        bodies: list[dict[str, Any]] = []
        for data in self.sent():
            for head, body in _split_requests(data):
                if head.startswith(b"POST ") and b"/chat/completions" in head.split(b"\r\n", 1)[0]:
                    bodies.append(json.loads(body))
        return bodies


def _split_requests(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """HTTP/1.1 requests in one connection's client bytes (Content-Length or chunked bodies)."""
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return
        head = data[pos:end]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        pos = end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = bytearray()
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    return
                size = int(data[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    pos = data.find(b"\r\n", pos) + 2
                    break
                body.extend(data[pos : pos + size])
                pos += size + 2
            yield head, bytes(body)
        else:
            length = int(headers.get(b"content-length", b"0"))
            if pos + length > len(data):
                return
            yield head, data[pos : pos + length]
            pos += length
