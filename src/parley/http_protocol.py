"""The HTTP/1.1 protocol parley serves with: uvicorn's httptools protocol, with a cap on the head.

httptools (llhttp) sets no limit on the request line and headers, and uvicorn's own limit
(`h11_max_incomplete_event_size`) applies only to its h11 protocol. Without one, a client can send
a single header of many megabytes, buffered whole before the application sees the request.
`HeaderLimitedProtocol` refuses a head larger than the configuration's `max_header_bytes` with
431 `header_too_large` and closes the connection, before any of parley's code runs:

- a head still incomplete after more than `max_header_bytes` bytes (a header still arriving) is
  refused as soon as that many bytes are in;
- a complete head is measured from what was parsed (request target, each header's name and
  value plus four bytes of separators), so one that arrived in a single read is refused too.

`ParleyConfig` is uvicorn's `Config` with this protocol and the limit; it pickles, so worker
processes get it too. Imports: uvicorn, httptools, and parley's error envelope.
"""

from __future__ import annotations

from typing import Any

from uvicorn import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from parley.api.errors import error_response
from parley.api.request_context import HEADER as REQUEST_ID
from parley.api.request_context import new_request_id
from parley.errors import HeaderTooLargeError
from parley.web import COMMON_HEADERS

DEFAULT_MAX_HEADER_BYTES = 16 * 1024


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn then calls `send_400_response`."""


class HeaderLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; refuses request heads over `config.max_header_bytes` (431)."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_header_bytes: int = getattr(config, "max_header_bytes", DEFAULT_MAX_HEADER_BYTES)
        self._reading_head = True  # between the end of one request and the end of the next head
        self._head_bytes = 0  # bytes received while reading the head
        self._head_refused = False

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.max_header_bytes and not self._head_refused:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._head_refused = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:  # the parse stopped because on_headers_complete refused the head
            self._head_refused = False
            self._refuse_head()
            return
        super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._head_refused = True
        self._reading_head = False
        if self.transport.is_closing():
            return
        error = HeaderTooLargeError(f"The request line and headers are larger than {self.max_header_bytes} bytes.")
        # Answered before the app (and its request context) sees the request: an id of its own.
        response = error_response(error, {**COMMON_HEADERS, REQUEST_ID: new_request_id(), "Connection": "close"})
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in [*self.server_state.default_headers, *response.raw_headers]:
            head.append(name + b": " + value + b"\r\n")
        self.transport.write(b"".join(head) + b"\r\n" + bytes(response.body))
        self.transport.close()


class ParleyConfig(Config):
    """uvicorn's `Config` serving with `HeaderLimitedProtocol` and its `max_header_bytes`."""

    def __init__(self, app: Any, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, **options: Any) -> None:
        options.setdefault("http", HeaderLimitedProtocol)
        super().__init__(app, **options)
        self.max_header_bytes = max_header_bytes
