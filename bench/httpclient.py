"""A lean HTTP/1.1 keep-alive client for the load generator (raw asyncio protocol, no library).

One `Connection` carries one request at a time. The response body (content-length or chunked) is
handed to a `BodySink` as it arrives, so the sink can time the first token in the very callback
that received it. Imports: standard library only.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast


class BodySink(Protocol):
    """Receives one response: its status, then body pieces, then the end."""

    def status(self, code: int) -> None: ...

    def body(self, data: bytes) -> None: ...


class ConnectionClosedError(ConnectionError):
    """The server closed the connection before the response ended."""


class _ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_chunked",
        "_close_after",
        "_done",
        "_head_done",
        "_left",
        "_sink",
        "closed",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._sink: BodySink | None = None
        self._done: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = b""
        self._head_done = False
        self._chunked = False
        self._left = -1  # content-length bytes left, or the current chunk's bytes left
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        done = self._done
        if done is not None and not done.done():
            if self._head_done and not self._chunked and self._left < 0:
                done.set_result(None)  # a body delimited by the close
            else:
                done.set_exception(ConnectionClosedError("connection closed mid-response"))

    def start(self, request: bytes, sink: BodySink) -> asyncio.Future[None]:
        assert self.transport is not None
        self._reset()
        self._sink = sink
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._done

    def data_received(self, data: bytes) -> None:
        if self._sink is None:
            return
        buf = self._buf + data if self._buf else data
        if not self._head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            self._head(buf[:end])
            buf = buf[end + 4 :]
        self._buf = b""
        if self._chunked:
            self._chunks(buf)
        elif self._left >= 0:
            take = buf[: self._left]
            self._left -= len(take)
            if take:
                self._sink.body(take)
            if self._left == 0:
                self._finish()
        elif buf:
            self._sink.body(buf)

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        assert self._sink is not None
        self._sink.status(int(lines[0].split(b" ", 2)[1]))
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                self._left = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                self._chunked = True
            elif name == b"connection" and value == b"close":
                self._close_after = True
        self._head_done = True
        if not self._chunked and self._left == 0:
            self._finish()

    def _chunks(self, buf: bytes) -> None:
        sink = self._sink
        assert sink is not None
        pos, n = 0, len(buf)
        while pos < n:
            if self._left > 0:  # inside a chunk's data
                end = min(n, pos + self._left)
                sink.body(buf[pos:end])
                self._left -= end - pos
                pos = end
                if self._left == 0:
                    self._left = -2  # its CRLF follows
                continue
            if self._left == -2:
                if n - pos < 2:
                    self._buf = buf[pos:]
                    return
                pos += 2
                self._left = -1
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self._buf = buf[pos:]
                return
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self._buf = b""
                self._finish()  # trailers are not used by any server here
                return
            self._left = size
        return

    def _finish(self) -> None:
        done = self._done
        self._sink = None
        if done is not None and not done.done():
            done.set_result(None)
        if self._close_after and self.transport is not None:
            self.transport.close()


class Connection:
    """A keep-alive connection that reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._proto: _ClientProtocol | None = None

    async def request(self, request: bytes, sink: BodySink) -> None:
        proto = self._proto
        if proto is None or proto.closed:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_ClientProtocol, self.host, self.port)
            self._proto = proto
        try:
            await proto.start(request, sink)
        except BaseException:
            self.close()  # a half-read response leaves the connection unusable
            raise

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def build_request(method: str, host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
