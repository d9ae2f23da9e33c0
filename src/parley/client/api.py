"""The part of parley's HTTP API that `parley chat` uses, and how it reads a stream.

A stream (a turn, or the continuation a decision starts) is read on a helper thread that puts
what it reads on a queue, as `(kind, value)`:

    ("event", (name, data))   an SSE event of the stream, in order
    ("json", body)            the answer was JSON, not a stream (a decision while others wait)
    ("api_error", ApiError)   the first request was refused
    ("lost", why)             the stream was cut and could not be resumed
    ("failed", why)           the server could not be reached
    ("end", None)             always last

A cut stream is resumed from the session's event stream after the last event read
(`Last-Event-ID`), so a reply is neither lost nor shown twice.

May import: the standard library, httpx2 and parley's SSE decoder (`parley.providers.sse`, itself
standard library only). Nothing else from parley: this is any API client's view.
"""

from __future__ import annotations

import contextlib
import json
import queue
from collections.abc import Iterator
from typing import Any

import httpx2

from parley.providers.sse import ServerSentEvent, SSEDecoder

Out = queue.Queue[tuple[str, Any]]
STREAM_TIMEOUT = httpx2.Timeout(30.0, read=90.0)  # heartbeats arrive every <= 15 s
_REATTACHES = 3


class ApiError(Exception):
    """A non-2xx answer, carrying the envelope's code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    @classmethod
    def from_response(cls, response: httpx2.Response) -> ApiError:
        body: Any = {}
        with contextlib.suppress(ValueError):
            body = response.json()
        body = body if isinstance(body, dict) else {}
        message = str(body.get("error") or response.reason_phrase or "request failed")
        code = str(body.get("code") or f"http_{response.status_code}")
        return cls(response.status_code, code, message, response.headers.get("retry-after"))


class Api:
    """The endpoints the client uses."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx2.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response.json() if response.content else {}

    def interrupt(self, session_id: str) -> None:
        with contextlib.suppress(ApiError):  # 409 no_turn_running: it ended on its own meanwhile
            self.call("POST", f"/api/v1/ai/sessions/{session_id}/interrupt", timeout=10.0)

    def session_tools(self, session_id: str) -> list[dict[str, Any]]:
        """The tools this session's model may use (`GET /sessions/{id}/tools`)."""
        return list(self.call("GET", f"/api/v1/ai/sessions/{session_id}/tools")["data"])

    def stream_turn(self, session_id: str, content: str, out: Out, tool_choice: Any = None) -> None:
        """Run on a helper thread: send a message (`tool_choice` as the API takes it), stream the turn."""
        body: dict[str, Any] = {"content": content}
        if tool_choice is not None:
            body["toolChoice"] = tool_choice
        self._stream(session_id, "messages", body, out)

    def decide(
        self,
        session_id: str,
        execution_id: str,
        out: Out,
        *,
        approved: bool,
        reason: str | None = None,
        always: bool = False,
    ) -> None:
        """Run on a helper thread: approve or deny a waiting call; the continuation's stream if it
        settled the last one, else the JSON answer."""
        body: dict[str, Any] = {"approved": approved, "always": always}
        if reason:
            body["reason"] = reason
        self._stream(session_id, f"approve/{execution_id}", body, out)

    def _stream(self, session_id: str, path: str, body: dict[str, Any], out: Out) -> None:
        base = f"/api/v1/ai/sessions/{session_id}"
        last_id = ""  # of the last event read, for `Last-Event-ID` when re-attaching
        try:
            request = self.http.build_request("POST", f"{base}/{path}", json=body, timeout=STREAM_TIMEOUT)
            for attempt in range(_REATTACHES + 1):
                response = self.http.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        response.read()
                        if attempt == 0:
                            out.put(("api_error", ApiError.from_response(response)))
                        else:  # the turn finished while we were away
                            out.put(("lost", "the reply ended while the connection was down"))
                        return
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        out.put(("json", json.loads(response.read() or b"{}")))
                        return
                    done, last_id = self._pump(response, out, last_id)
                    if done:
                        return
                finally:
                    response.close()
                # Cut off before `done`: re-attach to the running turn after the last event seen.
                headers = {"Last-Event-ID": last_id} if last_id else {}
                request = self.http.build_request("GET", f"{base}/events", headers=headers, timeout=STREAM_TIMEOUT)
            out.put(("lost", "the connection kept dropping"))
        except httpx2.HTTPError as exc:
            out.put(("failed", f"{type(exc).__name__}: {exc}"))
        finally:
            out.put(("end", None))

    @staticmethod
    def _pump(response: httpx2.Response, out: Out, last_id: str) -> tuple[bool, str]:
        """Put the events of `response` on `out`; returns (whether `done` came, the last event's id)."""
        with contextlib.suppress(httpx2.TransportError):  # a cut connection: caller re-attaches
            for sse in _events(response):
                last_id = sse.id or last_id
                try:
                    payload = json.loads(sse.data)
                except ValueError:
                    continue
                out.put(("event", (sse.event, payload)))
                if sse.event == "done":
                    return True, last_id
        return False, last_id


def _events(response: httpx2.Response) -> Iterator[ServerSentEvent]:
    """The events of one response as its bytes arrive. A decoder per response: a cut connection
    leaves half an event behind, which must neither be dispatched nor run into the next stream."""
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        yield from decoder.feed(chunk)
    yield from decoder.finish()
