"""The HTTP seam shared by the providers: one place where aiohttp meets parley's errors.

`UpstreamClient` owns a pooled aiohttp session whose resolver enforces the SSRF policy, posts
without following redirects, turns non-2xx answers into `ProviderError` (the body goes to the
log, never into the message), and computes retry delays. `read_event_batches` is the read loop:
bytes -> SSE events -> provider events, with transport failures mapped on the way. Wire formats
stay in each provider's translator.

Imports: standard library, aiohttp, orjson, parley.errors, parley.metrics (retries), parley.providers.*.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult

from parley import metrics
from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import ProviderEvent, Usage
from parley.providers.context import stated_window
from parley.providers.sse import ServerSentEvent, SSEDecoder
from parley.providers.url_policy import address_refusal, host_refusals

logger = logging.getLogger("parley.providers")

Kind = ProviderErrorKind
MAX_ERROR_BODY = 64 * 1024
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
PROBE_TIMEOUT = 5.0  # seconds a readiness probe waits for the model server's answer
Classify = Callable[[int | None, object], ProviderErrorKind]


class StreamFailedError(ProviderError):
    """A failure after the response started; `partial_usage` is what was counted so far."""

    def __init__(
        self, kind: ProviderErrorKind, *, status: int | None = None, partial_usage: Usage | None = None
    ) -> None:
        super().__init__(kind, status=status)
        self.partial_usage = partial_usage


class AddressNotAllowedError(ProviderError):
    """The base URL points at an address the SSRF policy refuses; never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(Kind.UNAVAILABLE, f"The model server address is not allowed: {reason}.")

    @property
    def retryable(self) -> bool:
        return False


class ToolsUnsupportedError(ProviderError):
    """The model server refuses tool calling; never retried, whatever the status (llama.cpp says
    it with a 500)."""

    def __init__(self, *, status: int | None = None) -> None:
        super().__init__(Kind.TOOLS_UNSUPPORTED, status=status)

    @property
    def retryable(self) -> bool:
        return False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- connect-time address policy -----------------------------------------------------------------


class _RefusedAddress(OSError):
    """Raised inside aiohttp's connector; an OSError so aiohttp wraps it as a connector error."""


class PolicyResolver(AbstractResolver):
    """Resolves with `inner` and drops every address `address_refusal` rejects.

    The connection is made to an address that was checked, so a name cannot be rebound to a
    metadata address between the check and the connect.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_refusal(r["host"]) is None]
        if not allowed:
            reasons = "; ".join(sorted({address_refusal(r["host"]) or "" for r in results}))
            raise _RefusedAddress(f"{host} resolves only to refused addresses ({reasons or 'none'})")
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def literal_refusal(base_url: str) -> str | None:
    """Why the host of `base_url`, written as an address, is refused; None for a name.

    aiohttp connects to an IP literal without asking the resolver, so literals are checked here,
    once, by the start-up check's own `host_refusals`: a numeric spelling such as `2130706433` or
    `0x7f.1` gets the reason `parley check-config` gives. Names are left to the resolver.
    """
    return "; ".join(host_refusals(urlsplit(base_url).hostname or "")) or None


def transport_error(exc: BaseException, *, started: bool, partial_usage: Usage | None = None) -> ProviderError:
    """The one place foreign (aiohttp / socket) exceptions become ProviderErrors."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, _RefusedAddress):
        return AddressNotAllowedError(str(exc.os_error))
    if isinstance(exc, aiohttp.InvalidURL):
        return AddressNotAllowedError("the URL is not in a form parley accepts")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = Kind.UNAVAILABLE  # the connect itself timed out: like a refused connection
    elif isinstance(exc, TimeoutError):  # aiohttp's sock_read timeout is a TimeoutError too
        kind = Kind.TIMEOUT
    else:
        kind = Kind.STREAM if started else Kind.UNAVAILABLE
    logger.warning("model server connection failed (%s): %s", type(exc).__name__, exc)
    if started:
        return StreamFailedError(kind, partial_usage=partial_usage)
    return ProviderError(kind)


# --- reading a stream ----------------------------------------------------------------------------


class StreamTranslator(Protocol):
    """What a provider's wire translator offers the read loop."""

    @property
    def done(self) -> bool: ...

    def feed(self, events: Sequence[ServerSentEvent], out: list[ProviderEvent]) -> None: ...

    def partial_usage(self) -> Usage | None: ...


T = TypeVar("T", bound=StreamTranslator)
EndOfStream = Callable[[T, aiohttp.ClientResponse], Awaitable[list[ProviderEvent]]]


def translate_read(
    decoder: SSEDecoder, translator: StreamTranslator, chunk: bytes
) -> tuple[list[ProviderEvent], ProviderError | None]:
    """The events one read (`b""`: the end of the body) completes, and the error that cut them short."""
    events: list[ProviderEvent] = []
    try:
        translator.feed(decoder.feed(chunk) if chunk else decoder.finish(), events)
    except ProviderError as exc:
        return events, exc
    return events, None


# --- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamOptions:
    """How a provider talks to its server: timeouts, retries, and its seams (session, sleep)."""

    connect_timeout: float = 10
    idle_timeout: float = 120  # silence between two reads (and before the response head)
    max_retries: int = 3
    retry_base_delay: float = 0.5
    max_retry_delay: float = 10.0
    session: aiohttp.ClientSession | None = None
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep


class UpstreamClient:
    """POSTs to one upstream URL with parley's network policy; see the module docstring."""

    def __init__(
        self,
        *,
        url: str,
        headers: dict[str, str],
        classify: Classify,
        label: str,
        options: UpstreamOptions,
        request_id_header: str | None = None,
    ) -> None:
        self.url = url
        self.headers = headers
        self.label = label
        self._classify = classify
        self._refusal = literal_refusal(url)
        # sock_read bounds every wait for bytes, including the wait for the response headers.
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.connect_timeout, sock_read=options.idle_timeout
        )
        self.max_retries = options.max_retries
        self._retry_base_delay = options.retry_base_delay
        self._max_retry_delay = options.max_retry_delay
        self._session = options.session
        self._owns_session = False
        self.sleep = options.sleep
        self._request_id_header = request_id_header

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pool limit: concurrency is bounded by the turns running, and a limit would make
            # long streams queue behind each other.
            connector = aiohttp.TCPConnector(resolver=PolicyResolver(), limit=0)
            # No cookie jar: a cookie set by the model server must not ride along on other
            # tenants' requests (and keeping none costs nothing per request).
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._owns_session = False

    async def open(
        self, payload: bytes, *, headers: dict[str, str] | None = None, classify: Classify | None = None
    ) -> aiohttp.ClientResponse:
        """POST and return a 2xx response (the caller closes it); ProviderError otherwise, of the
        kind `classify` (by default the client's) gives."""
        if self._refusal is not None:
            raise AddressNotAllowedError(self._refusal)
        try:
            response = await self.session().post(
                self.url, data=payload, headers=headers or self.headers, allow_redirects=False, timeout=self.timeout
            )
        except NETWORK_ERRORS as exc:
            raise transport_error(exc, started=False) from exc
        if 200 <= response.status < 300:
            return response
        async with response:
            raise await self.status_error(response, classify)

    async def stream(
        self, payload: bytes, translator: Callable[[], T], end: EndOfStream[T], *, classify: Classify | None = None
    ) -> AsyncIterator[Sequence[ProviderEvent]]:
        """POST `payload` and yield its provider events, one batch per network read (never empty).

        Batching by read keeps the per-token cost to the consumer's own loop: however many upstream
        events one read completes, they cost one generator step. Events that precede an in-stream
        error in the same read are yielded before the error is raised. `end` runs once the body
        ends and returns the last events (or raises: a stream that never finished, say). A
        failure before anything was yielded is retried as `ProviderError.retryable` says. An HTTP
        error answer gets the kind `classify` gives (by default the client's).
        Leaving the generator early (the turn stopped, or failed) releases the response, which
        closes the connection: the server stops generating.
        """
        attempt = 0
        while True:
            yielded = False
            try:
                response = await self.open(payload, classify=classify)
                reader = translator()
                decoder = SSEDecoder()
                async with response:
                    if response.content_type == "text/html":
                        raise await self._not_a_stream(response)
                    content = response.content
                    while not reader.done:
                        try:
                            chunk = await content.readany()
                        except NETWORK_ERRORS as exc:
                            raise transport_error(exc, started=True, partial_usage=reader.partial_usage()) from exc
                        events, failure = translate_read(decoder, reader, chunk)
                        if events:
                            yielded = True
                            yield events
                        if failure is not None:
                            raise failure
                        if not chunk:
                            break
                    last = await end(reader, response)
                if last:
                    yield last
                return
            except ProviderError as exc:
                delay = None if yielded else self.retry_delay(exc, attempt)
                if delay is None:
                    raise
            attempt += 1
            metrics.upstream_retried()
            logger.info("retrying %s in %.2fs (attempt %d)", self.label, delay, attempt)
            await self.sleep(delay)

    async def _not_a_stream(self, response: aiohttp.ClientResponse) -> ProviderError:
        """A 2xx web page where a reply stream belongs: a wrong base URL, a captive portal, a proxy's
        page. Said as such (the start of the page goes to the log), never retried."""
        try:
            head = await response.content.read(300)
        except NETWORK_ERRORS:
            head = b""
        logger.warning(
            "%s %s answered %d with a web page, not a stream: %.300r", self.label, self.url, response.status, head
        )
        return ProviderError(ProviderErrorKind.PROTOCOL)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        seconds: float | None = None,
        json: object = None,
        data: bytes | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request beside the reply streams (a readiness probe, a question about the model),
        under the same network policy: the address checked, no redirect followed, never retried.
        It may take `seconds` in all (None: a stream's connect and idle timeouts). Raises
        AddressNotAllowedError for a refused address, and network errors as they come."""
        if self._refusal is not None:
            raise AddressNotAllowedError(self._refusal)
        timeout = self.timeout if seconds is None else aiohttp.ClientTimeout(total=seconds)
        async with self.session().request(
            method, url, json=json, data=data, headers=headers, allow_redirects=False, timeout=timeout
        ) as response:
            yield response

    async def probe(self, url: str, headers: dict[str, str]) -> str | None:
        """GET `url` once, briefly: None when the server answered (any status below 500 but 401
        and 403: a server without that route is still up), else why it is not usable. For
        readiness checks: never raises."""
        if self._refusal is not None:
            return f"the model server address is not allowed: {self._refusal}"
        try:
            async with self.request("GET", url, headers=headers, seconds=PROBE_TIMEOUT) as response:
                status = response.status
        except NETWORK_ERRORS as exc:
            return f"the model server is unreachable ({type(exc).__name__})"
        if status in (401, 403):
            return f"the model server refused parley's credentials (HTTP {status})"
        if status >= 500:
            return f"the model server answered HTTP {status}"
        return None

    async def status_error(self, response: aiohttp.ClientResponse, classify: Classify | None = None) -> ProviderError:
        status = response.status
        raw = b""
        try:
            while len(raw) < MAX_ERROR_BODY:
                piece = await response.content.read(MAX_ERROR_BODY - len(raw))
                if not piece:
                    break
                raw += piece
        except NETWORK_ERRORS:
            pass  # classify by status alone
        if 300 <= status < 400:
            logger.warning(
                "%s %s answered HTTP %d (redirect to %r, not followed)",
                self.label,
                self.url,
                status,
                response.headers.get("Location"),
            )
            return ProviderError(Kind.HTTP, status=status)
        text = raw.decode("utf-8", "replace")
        request_id = response.headers.get(self._request_id_header) if self._request_id_header else None
        logger.warning(
            "%s %s answered HTTP %d%s: %s",
            self.label,
            self.url,
            status,
            f" (request {request_id})" if request_id else "",
            text,
        )
        try:
            parsed: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = text
        kind = (classify or self._classify)(status, parsed)
        if kind is Kind.TOOLS_UNSUPPORTED:
            return ToolsUnsupportedError(status=status)
        return ProviderError(
            kind,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            window=stated_window(parsed) if kind is Kind.CONTEXT_LENGTH else None,
        )

    def retry_delay(self, exc: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if attempt >= self.max_retries or not exc.retryable:
            return None
        if exc.retry_after is not None:
            # Retrying sooner than asked would fail again; a longer wait is the user's call.
            return exc.retry_after if exc.retry_after <= self._max_retry_delay else None
        delay = min(self._max_retry_delay, self._retry_base_delay * 2.0**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter spreads retries of many turns
