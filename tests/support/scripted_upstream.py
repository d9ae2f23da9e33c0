"""A scripted OpenAI-compatible model server on loopback, for faults real servers won't produce.

`ScriptedUpstream` runs a small raw-asyncio HTTP/1.1 server in a background thread on
127.0.0.1 (ephemeral port) so it works from sync and async tests alike:

    with ScriptedUpstream() as upstream:                 # or: async with ScriptedUpstream() ...
        upstream.enqueue(Reply(429, {"error": "slow down"}, headers={"Retry-After": "0"}))
        upstream.enqueue(token_stream(3, delay=0.01))
        provider = OpenAICompatibleProvider(base_url=upstream.base_url, api_key="k")
        ...
        assert upstream.requests[-1].json["stream"] is True

Each POST /v1/chat/completions takes the next enqueued script, else the default (a short token
stream). A script is one of `Reply` (status, body, headers), `Stream` (raw SSE bytes in chunks,
with pacing and an ending: clean, dropped, reset or stalled; `tool_call_stream` makes one in which
the model calls tools, as vLLM, llama-cpp-python or Ollama stream it), `TokenStream` (generated
chunks; also answers `stream: false` with a plain completion), `Stall` (send nothing) or `Refuse`
(close without answering). GET /v1/models lists the model. Responses are pre-encoded and written with chunked
transfer encoding, so many concurrent paced streams cost little CPU (benchmarks use this too).

Each connection has exactly one reader task, so a client closing the connection is seen at once:
`RecordedRequest.closed` is set and a running stream stops writing.

Imports: standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import orjson

__all__ = [
    "RecordedRequest",
    "Refuse",
    "Reply",
    "Script",
    "ScriptedUpstream",
    "Stall",
    "Stream",
    "TokenStream",
    "ToolCallShape",
    "scripted_call_id",
    "sse_event",
    "sse_replay",
    "token_stream",
    "tool_call_stream",
]

End = Literal["close", "drop", "reset", "stall"]
# close: proper end of the chunked body; drop: close the socket without it (FIN);
# reset: abort the socket (RST); stall: keep the connection open and send nothing more.


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def json_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode() if value is not None else ""


def sse_event(obj: Any) -> bytes:
    """One `data:` event for a JSON-able object (or a raw string such as "[DONE]")."""
    payload = obj.encode() if isinstance(obj, str) else orjson.dumps(obj)
    return b"data: " + payload + b"\n\n"


@dataclass(frozen=True)
class Reply:
    """A plain HTTP response (error answers, redirects, non-stream bodies)."""

    status: int = 200
    body: bytes | str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before anything is sent


@dataclass(frozen=True)
class Stream:
    """A 200 `text/event-stream` answer that writes `chunks` as given, paced."""

    chunks: Sequence[bytes] = ()
    delay: float = 0.0  # between chunks
    first_delay: float = 0.0  # after the headers, before the first chunk
    header_delay: float = 0.0  # before the status line (a stall before the first byte)
    end: End = "close"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def framed(self) -> list[bytes]:
        return [_frame(c) for c in self.chunks if c]


@dataclass(frozen=True)
class TokenStream:
    """A generated chat-completion stream of `n` tokens (`text` is formatted with `{i}`)."""

    n: int = 3
    text: str = "tok{i} "
    tokens: Sequence[str] | None = None  # overrides n/text
    first_delay: float = 0.0
    delay: float = 0.0
    usage: bool = True
    done: bool = True
    finish_reason: str | None = "stop"
    end: End = "close"
    prompt_tokens: int = 7
    model: str = "scripted-model"

    @cached_property
    def token_list(self) -> list[str]:
        if self.tokens is not None:
            return list(self.tokens)
        return [self.text.format(i=i) for i in range(self.n)]

    @cached_property
    def chunks(self) -> list[bytes]:
        """The SSE events (unframed): role chunk, tokens, finish, usage, [DONE]."""

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse_event(
                {
                    "id": "chatcmpl-scripted",
                    "object": "chat.completion.chunk",
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        out = [chunk({"role": "assistant", "content": ""})]
        out += [chunk({"content": t}) for t in self.token_list]
        if self.finish_reason is not None:
            out.append(chunk({}, self.finish_reason))
        if self.usage:
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.token_list)}
            out.append(sse_event({"object": "chat.completion.chunk", "choices": [], "usage": usage}))
        if self.done:
            out.append(b"data: [DONE]\n\n")
        return out

    def as_stream(self) -> Stream:
        return Stream(chunks=self.chunks, delay=self.delay, first_delay=self.first_delay, end=self.end)

    def completion(self) -> bytes:
        """The same reply as a `stream: false` chat completion."""
        return orjson.dumps(
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(self.token_list)},
                        "finish_reason": self.finish_reason or "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": len(self.token_list),
                    "total_tokens": self.prompt_tokens + len(self.token_list),
                },
            }
        )


@dataclass(frozen=True)
class Stall:
    """Read the request, then send nothing until the client gives up."""


@dataclass(frozen=True)
class Refuse:
    """Read the request, then close the connection without any response."""


Script = Reply | Stream | TokenStream | Stall | Refuse


def token_stream(n: int = 3, **kwargs: Any) -> TokenStream:
    return TokenStream(n=n, **kwargs)


ToolCallShape = Literal["vllm", "llama-cpp-python", "ollama"]


def scripted_call_id(shape: ToolCallShape, index: int, name: str) -> str:
    """The id `tool_call_stream` gives call `index`, in the style of that server."""
    if shape == "vllm":
        return f"chatcmpl-tool-scripted{index}"
    if shape == "llama-cpp-python":
        return f"call__{index}_{name}_cmpl-scripted"
    return f"call_scripted{index}"


def tool_call_stream(
    calls: Sequence[tuple[str, str]],
    text: str = "",
    *,
    shape: ToolCallShape = "vllm",
    finish_reason: str = "tool_calls",
    prompt_tokens: int = 7,
    completion_tokens: int = 20,
    delay: float = 0.0,
    end: End = "close",
) -> Stream:
    """A stream in which the model writes `text`, then calls each `(name, arguments JSON)` in turn.

    Each SSE event is its own chunk (`delay` paces them). The shapes are those of the servers:
    `vllm` sends a call's id and name on its first fragment, then the arguments in two pieces, and
    a usage chunk (pass `finish_reason="stop"` for a forced call, as vLLM ends it); `llama-cpp-python`
    repeats the id and name on every fragment beside a legacy `function_call` copy, with fields it
    does not use sent as null and no usage; `ollama` sends each call whole in one chunk, every one
    at index 0. Ids are `scripted_call_id`'s.
    """
    model = "scripted-model"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        envelope: dict[str, Any] = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "model": model}
        if shape == "ollama":
            envelope["system_fingerprint"] = "fp_ollama"
        return sse_event({**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    def llama_delta(**fields: Any) -> dict[str, Any]:
        return {"role": None, "content": None, "function_call": None, "tool_calls": None, **fields}

    out: list[bytes] = []
    if shape == "vllm":
        out.append(chunk({"role": "assistant", "content": ""}))
        if text:
            out.append(chunk({"content": text}))
        for i, (name, arguments) in enumerate(calls):
            call_id = scripted_call_id(shape, i, name)
            out.append(
                chunk({"tool_calls": [{"id": call_id, "type": "function", "index": i, "function": {"name": name}}]})
            )
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    elif shape == "llama-cpp-python":
        out.append(chunk(llama_delta(role="assistant")))
        if text:
            out.append(chunk(llama_delta(content=text)))
        for i, (name, arguments) in enumerate(calls):
            call_id = scripted_call_id(shape, i, name)
            for piece in [arguments[j : j + 4] for j in range(0, len(arguments), 4)] + [""]:
                function = {"name": name, "arguments": piece}
                call = {"index": i, "id": call_id, "type": "function", "function": function}
                out.append(chunk(llama_delta(function_call=function, tool_calls=[call])))
    else:
        if text:
            out.append(chunk({"role": "assistant", "content": text}))
        for i, (name, arguments) in enumerate(calls):
            call = {"id": scripted_call_id(shape, i, name), "index": 0, "type": "function"}
            call["function"] = {"name": name, "arguments": arguments}
            out.append(chunk({"role": "assistant", "content": "", "tool_calls": [call]}))
    finish_delta = {"ollama": {"role": "assistant", "content": ""}, "llama-cpp-python": llama_delta(), "vllm": {}}
    out.append(chunk(finish_delta[shape], finish_reason))
    if shape != "llama-cpp-python":
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        out.append(sse_event({"object": "chat.completion.chunk", "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return Stream(chunks=out, delay=delay, end=end)


def sse_replay(raw: bytes, *, chunk_size: int | None = None, delay: float = 0.0, end: End = "close") -> Stream:
    """Replay raw SSE bytes, cut into `chunk_size` pieces (one piece when None)."""
    if chunk_size is None:
        return Stream(chunks=[raw], delay=delay, end=end)
    pieces = [raw[i : i + chunk_size] for i in range(0, len(raw), chunk_size)]
    return Stream(chunks=pieces, delay=delay, end=end)


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    # The connection that carried this request (its last one) closed: the client left, or a
    # drop/reset/refuse script ended it. A stream the client abandons sets it within a few ms.
    closed: threading.Event = field(default_factory=threading.Event)
    completed: threading.Event = field(default_factory=threading.Event)  # server wrote the whole answer


class _Connection:
    __slots__ = ("closed", "last", "queue", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = asyncio.Event()
        self.queue: asyncio.Queue[RecordedRequest | None] = asyncio.Queue()
        self.last: RecordedRequest | None = None


def _status_line(status: int) -> bytes:
    from http import HTTPStatus

    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STREAM_HEAD = b"content-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n"


class ScriptedUpstream:
    """The scripted server; see the module docstring. Start/stop it with `with` or `async with`."""

    def __init__(
        self,
        *,
        model: str = "scripted-model",
        default: Script | None = None,
        window: int | None = None,
        says_window: Literal["vllm", "llama.cpp", "ollama"] | None = None,
    ) -> None:
        self.model = model
        # Enforce a context window as vLLM does (prompt tokens counted as characters / 4, plus
        # max_tokens): a longer request gets its 400 context_length_exceeded answer.
        self.window = window
        self.says_window = says_window  # which server's probe states the window
        self.overflows = 0
        self._default: Script = default if default is not None else TokenStream(model=model)
        self._scripts: deque[Script] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        self.port = 0
        self.models_reply: Reply | None = None  # how GET /v1/models answers (None: the model list)

    # --- control (any thread) --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat-completion requests received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def open_streams(self) -> int:
        """Chat-completion answers being written right now."""
        return self._active

    def enqueue(self, *scripts: Script) -> None:
        """Answer the next chat-completion requests with these scripts, in order."""
        with self._lock:
            self._scripts.extend(scripts)

    def set_default(self, script: Script) -> None:
        """Answer with `script` whenever the queue is empty."""
        with self._lock:
            self._default = script

    def wait_closed(self, index: int = -1, timeout: float = 2.0) -> bool:
        """Block until the connection of request `index` is closed; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.requests:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return self.requests[index].closed.wait(max(0.0, deadline - time.monotonic()))

    async def wait_closed_async(self, index: int = -1, within: float = 2.0) -> bool:
        """`wait_closed` for async tests (polls; never blocks the test's event loop)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            requests = self.requests
            if requests and requests[index].closed.is_set():
                return True
            await asyncio.sleep(0.005)
        return False

    def start(self) -> ScriptedUpstream:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="scripted-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("scripted upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ScriptedUpstream:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    # --- server (its own thread and loop) ---------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._on_connection, "127.0.0.1", 0, backlog=1024)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(reader, writer)
        reading = asyncio.create_task(self._read_requests(conn))
        # This task may be cancelled (server shutdown) at any await, cleanup included; it must
        # still end quietly, or asyncio logs "Exception in callback" for the cancelled task.
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            try:
                while (request := await conn.queue.get()) is not None:
                    if not await self._serve(request, conn):
                        break
            finally:
                reading.cancel()
                writer.close()
                with contextlib.suppress(BaseException):
                    await reading
                with contextlib.suppress(BaseException):
                    await writer.wait_closed()
                self._tasks.discard(task)

    async def _read_requests(self, conn: _Connection) -> None:
        """The connection's only reader: parses requests and notices the close at once."""
        try:
            while True:
                head = await conn.reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await conn.reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    parsed = orjson.loads(body) if body else None
                except orjson.JSONDecodeError:
                    parsed = None
                request = RecordedRequest(method, path, headers, body, parsed)
                conn.last = request
                await conn.queue.put(request)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            conn.closed.set()
            if conn.last is not None:
                conn.last.closed.set()
            conn.queue.put_nowait(None)

    async def _serve(self, request: RecordedRequest, conn: _Connection) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        window, says = self.window, self.says_window
        if request.method == "GET" and request.path.rstrip("/") == "/v1/models":
            if self.models_reply is not None:
                return await self._reply(self.models_reply, request, conn)
            model: dict[str, Any] = {"id": self.model, "object": "model", "owned_by": "scripted"}
            if window is not None and says == "vllm":
                model["max_model_len"] = window
            models = {"object": "list", "data": [model]}
            return await self._reply(Reply(200, models), request, conn)
        if request.method == "GET" and request.path == "/props" and window is not None and says == "llama.cpp":
            return await self._reply(Reply(200, {"default_generation_settings": {"n_ctx": window}}), request, conn)
        if request.method == "POST" and request.path == "/api/show" and window is not None and says == "ollama":
            show = {"model_info": {"llama.context_length": 131072}, "parameters": f"num_ctx {window}\nstop <|eot|>"}
            return await self._reply(Reply(200, show), request, conn)
        if request.method == "POST" and request.path == "/tokenize" and says in ("vllm", "llama.cpp"):
            body = request.json if isinstance(request.json, dict) else {}
            text = str(body.get("prompt" if says == "vllm" else "content") or "")
            tokens = list(range(len(text) // 4))  # as the windowed server counts: characters / 4
            counted: dict[str, Any] = {"tokens": tokens}
            if says == "vllm":
                counted |= {"count": len(tokens), "max_model_len": window}
            return await self._reply(Reply(200, counted), request, conn)
        if request.method != "POST" or request.path != "/v1/chat/completions":
            return await self._reply(Reply(404, {"error": {"message": "no such route"}}), request, conn)
        if window is not None and isinstance(request.json, dict):
            asked = self.prompt_tokens(request.json) + int(request.json.get("max_tokens") or 0)
            if asked > window:
                with self._lock:
                    self._requests.append(request)
                    self.overflows += 1
                message = (
                    f"This model's maximum context length is {window} tokens. However, you requested {asked} "
                    "tokens. Please reduce the length of the messages or completion."
                )
                body = {"error": {"message": message, "type": "BadRequestError", "code": 400}}
                return await self._reply(Reply(400, body), request, conn)
        return await self._record_and_play(request, conn)

    def _counted(self, script: Script, request: RecordedRequest) -> Script:
        """A windowed server reports the prompt tokens it counted, as a real one does."""
        if self.window is not None and isinstance(script, TokenStream) and isinstance(request.json, dict):
            return dataclasses.replace(script, prompt_tokens=self.prompt_tokens(request.json))
        return script

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        """The prompt's tokens as the windowed server counts them: characters / 4, plus 8 a message."""
        messages = body.get("messages") or []
        return sum(len(json_text(m.get("content"))) // 4 + 8 for m in messages if isinstance(m, dict))

    async def _record_and_play(self, request: RecordedRequest, conn: _Connection) -> bool:
        """Record a request on the scripted route and answer it with the next script."""
        with self._lock:
            self._requests.append(request)
            script = self._scripts.popleft() if self._scripts else self._default
        self._active += 1
        try:
            return await self._play(self._counted(script, request), request, conn)
        finally:
            self._active -= 1

    async def _play(self, script: Script, request: RecordedRequest, conn: _Connection) -> bool:
        if isinstance(script, TokenStream):
            if isinstance(request.json, dict) and request.json.get("stream") is False:
                return await self._reply(Reply(200, script.completion()), request, conn)
            script = script.as_stream()
        if isinstance(script, Reply):
            return await self._reply(script, request, conn)
        if isinstance(script, Stream):
            return await self._stream(script, request, conn)
        if isinstance(script, Stall):
            await conn.closed.wait()
        return False  # Stall, Refuse: close without an answer

    async def _reply(self, reply: Reply, request: RecordedRequest, conn: _Connection) -> bool:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        body = reply.body
        content_type = "application/json"
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            data = orjson.dumps(body)
        headers = {"content-type": content_type, **{k.lower(): v for k, v in reply.headers.items()}}
        headers["content-length"] = str(len(data))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        conn.writer.write(_status_line(reply.status) + head + b"\r\n" + data)
        await conn.writer.drain()
        request.completed.set()
        return True

    async def _stream(self, stream: Stream, request: RecordedRequest, conn: _Connection) -> bool:
        writer = conn.writer
        if stream.header_delay:
            await asyncio.sleep(stream.header_delay)
        extra = "".join(f"{k}: {v}\r\n" for k, v in stream.headers.items()).encode()
        writer.write(_status_line(stream.status) + _STREAM_HEAD + extra + b"\r\n")
        framed = stream.framed
        if stream.first_delay:
            await writer.drain()
            await asyncio.sleep(stream.first_delay)
        if not stream.delay:
            writer.write(b"".join(framed))  # unpaced: one write, least CPU
        elif not await self._paced(framed, stream.delay, conn):
            return False  # the client went away: stop "generating"
        if stream.end == "close":
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            request.completed.set()
            return not conn.closed.is_set()
        await writer.drain()
        if stream.end == "reset":
            writer.transport.abort()
        elif stream.end == "stall":
            await conn.closed.wait()
        return False

    @staticmethod
    async def _paced(framed: list[bytes], delay: float, conn: _Connection) -> bool:
        """Write piece i at start + i * delay; a late loop writes every piece due at once, so
        the rate holds under load (benchmarks) instead of drifting. False if the client left."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent, total = 0, len(framed)
        while sent < total:
            if conn.closed.is_set():
                return False
            due = min(total, int((loop.time() - start) / delay) + 1)
            conn.writer.write(framed[sent] if due - sent == 1 else b"".join(framed[sent:due]))
            sent = due
            await conn.writer.drain()
            if sent < total:
                await asyncio.sleep(start + sent * delay - loop.time())
        return True
