"""Load generator: C concurrent keep-alive connections run N streamed turns and time them.

Runs in its own process (the driver starts it), so it never shares an event loop with the server
it measures. Two wire formats:

- `parley`: `POST /api/v1/ai/sessions/{id}/messages` with a bearer token; sessions are created
  through the API before the clock starts (each worker has its own, a few turns each, so no two
  turns of one session overlap and histories stay short).
- `openai`: `POST /v1/chat/completions` with `stream: true` (the upstream itself, or a proxy).
- `relay`: `POST /relay` of the bare relay (`bench/relay.py`), which answers in parley's format.

Every SSE `data:` payload is parsed with orjson in both formats, as a real client would, so the
client-side cost per token is the same whichever server is measured. A turn fails on a non-200
answer, a transport error, an `error` event, a missing end (`done` / `[DONE]`) or a token count
other than the one expected. Time to first token is measured from writing the request to reading
the first non-empty content delta.

    python -m bench.loadgen '<json config>'   ->   one JSON line of results on stdout

Loopback only; bounded by turn count and by `hard_seconds`.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.httpclient import Connection, build_request
from bench.upstream import raise_fd_limit, use_uvloop

API = "/api/v1/ai"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """One run; see `bench/run.py` for the loads."""

    target: str  # parley | openai | relay
    host: str = "127.0.0.1"
    port: int
    path: str = "/v1/chat/completions"
    concurrency: int
    turns: int  # timed turns, over all workers
    expected_tokens: int
    warmup: int = -1  # how many workers run one untimed turn first (-1: all)
    hard_seconds: float = 60.0  # everything still running then is cut (counted apart, not failed)
    soft_seconds: float = 30.0  # no new turn starts after this
    token: str = ""  # parley bearer token
    turns_per_session: int = 8
    model: str = "bench-model"
    api_key: str = "sk-bench"
    prompt: str = "Write a few words about load testing."
    sync: bool = False  # after warm-up print READY and wait for a line on stdin before the clock starts


class TurnSink:
    """Parses one streamed answer as it arrives; counts tokens, times the first one."""

    __slots__ = ("_openai", "_pending", "code", "done", "error", "first", "raw", "tokens")

    def __init__(self, openai: bool) -> None:
        self._openai = openai
        self._pending = b""
        self.code = 0
        self.tokens = 0
        self.first = 0.0
        self.done = False
        self.error: str | None = None
        self.raw = b""  # only kept for non-200 answers

    def status(self, code: int) -> None:
        self.code = code

    def body(self, data: bytes) -> None:
        if self.code != 200:
            self.raw += data
            return
        buf = self._pending + data if self._pending else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._pending = buf
            return
        self._pending = buf[end + 2 :]
        for block in buf[:end].split(b"\n\n"):
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        if self._openai:
            if data == b"[DONE]":
                self.done = True
                return
            obj = orjson.loads(data)
            if obj.get("error"):
                self.error = str(obj["error"])[:200]
                return
            choices = obj.get("choices")
            if choices and (choices[0].get("delta") or {}).get("content"):
                self._token()
            return
        obj = orjson.loads(data)
        kind = obj["type"]
        if kind == "content_delta":
            self._token()
        elif kind == "done":
            self.done = True
        elif kind == "error":
            self.error = f"{obj.get('code')}: {obj.get('message')}"[:200]

    def _token(self) -> None:
        if not self.tokens:
            self.first = time.perf_counter()
        self.tokens += 1


@dataclass(slots=True)
class Results:
    ttft: list[float] = field(default_factory=list)
    turn: list[float] = field(default_factory=list)
    tokens: int = 0
    failures: int = 0
    samples: list[str] = field(default_factory=list)
    live: set[TurnSink] = field(default_factory=set)

    def fail(self, why: str) -> None:
        self.failures += 1
        if len(self.samples) < 5:
            self.samples.append(why)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Client:
    """Builds the requests of one target."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if cfg.target == "parley":
            self.headers["Authorization"] = f"Bearer {cfg.token}"
            self.body = orjson.dumps({"content": cfg.prompt})
        elif cfg.target == "relay":
            self.body = b"{}"
        else:
            self.headers["Authorization"] = f"Bearer {cfg.api_key}"
            self.body = orjson.dumps(
                {
                    "model": cfg.model,
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": cfg.prompt},
                    ],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "max_tokens": 1024,
                }
            )
        path = "/relay" if cfg.target == "relay" else cfg.path
        self._direct = build_request("POST", cfg.host, cfg.port, path, self.body, self.headers)

    def turn_request(self, session_id: str | None) -> bytes:
        if session_id is None:
            return self._direct
        path = f"{API}/sessions/{session_id}/messages"
        return build_request("POST", self.cfg.host, self.cfg.port, path, self.body, self.headers)

    async def create_sessions(self, conn: Connection, count: int) -> list[str]:
        cfg = self.cfg
        request = build_request("POST", cfg.host, cfg.port, f"{API}/sessions", b"{}", self.headers)
        ids = []
        for _ in range(count):
            sink = JsonSink()
            await conn.request(request, sink)
            if sink.code != 201:
                raise RuntimeError(f"creating a session answered {sink.code}: {sink.raw[:200]!r}")
            ids.append(orjson.loads(sink.raw)["id"])
        return ids


class JsonSink:
    """Keeps a whole (small) answer."""

    def __init__(self) -> None:
        self.code = 0
        self.raw = b""

    def status(self, code: int) -> None:
        self.code = code

    def body(self, data: bytes) -> None:
        self.raw += data


async def one_turn(conn: Connection, client: Client, session: str | None, res: Results | None) -> None:
    sink = TurnSink(openai=client.cfg.target == "openai")
    if res is not None:
        res.live.add(sink)
    start = time.perf_counter()
    try:
        await conn.request(client.turn_request(session), sink)
    except (OSError, ConnectionError) as exc:
        if res is not None:
            res.live.discard(sink)
            res.tokens += sink.tokens
            res.fail(f"transport: {exc!r}")
        return
    end = time.perf_counter()
    if res is None:
        return
    res.live.discard(sink)
    res.tokens += sink.tokens
    if sink.code != 200:
        res.fail(f"HTTP {sink.code}: {sink.raw[:200]!r}")
    elif sink.error is not None:
        res.fail(f"error event: {sink.error}")
    elif not sink.done:
        res.fail("stream ended without done")
    elif sink.tokens != client.cfg.expected_tokens:
        res.fail(f"{sink.tokens} tokens, expected {client.cfg.expected_tokens}")
    else:
        res.ttft.append(sink.first - start)
        res.turn.append(end - start)


async def run(cfg: Config) -> dict[str, Any]:
    client = Client(cfg)
    c = cfg.concurrency
    quota = [cfg.turns // c + (1 if i < cfg.turns % c else 0) for i in range(c)]
    warm = c if cfg.warmup < 0 else min(cfg.warmup, c)
    conns = [Connection(cfg.host, cfg.port) for _ in range(c)]
    sessions: list[list[str]] = [[] for _ in range(c)]
    setup_start = time.perf_counter()
    if cfg.target == "parley":
        need = [math.ceil((quota[i] + (1 if i < warm else 0)) / cfg.turns_per_session) for i in range(c)]
        made = await asyncio.gather(*(client.create_sessions(conns[i], need[i]) for i in range(c)))
        sessions = list(made)
    setup = time.perf_counter() - setup_start

    def session_for(worker: int, k: int) -> str | None:
        if cfg.target != "parley":
            return None
        own = sessions[worker]
        return own[(k // cfg.turns_per_session) % len(own)]

    res = Results()
    ready = asyncio.Event()
    go = asyncio.Event()
    waiting = [c]
    soft_deadline = [math.inf]

    async def worker(i: int) -> None:
        k = 0
        if i < warm:
            await one_turn(conns[i], client, session_for(i, k), None)
            k += 1
        waiting[0] -= 1
        if not waiting[0]:
            ready.set()
        await go.wait()
        for _ in range(quota[i]):
            if time.perf_counter() > soft_deadline[0]:
                break
            await one_turn(conns[i], client, session_for(i, k), res)
            k += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(c)]
    warm_start = time.perf_counter()
    await asyncio.wait_for(ready.wait(), timeout=cfg.hard_seconds)
    warmup = time.perf_counter() - warm_start
    if cfg.sync:
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    soft_deadline[0] = start + cfg.soft_seconds
    go.set()
    _, pending = await asyncio.wait(tasks, timeout=cfg.hard_seconds)
    for task in pending:
        task.cancel()
    elapsed = time.perf_counter() - start
    cut = len(res.live)
    res.tokens += sum(s.tokens for s in res.live)
    await asyncio.gather(*pending, return_exceptions=True)
    for conn in conns:
        conn.close()
    ms = 1000.0

    def pct(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else p * ms

    return {
        "turns": len(res.turn),
        "failures": res.failures,
        "failure_samples": res.samples,
        "cut": cut,
        "elapsed_s": elapsed,
        "setup_s": setup,
        "warmup_s": warmup,
        "tokens": res.tokens,
        "tokens_per_s": res.tokens / elapsed if elapsed else 0.0,
        "turns_per_s": len(res.turn) / elapsed if elapsed else 0.0,
        "ttft_p50_ms": pct(res.ttft, 50),
        "ttft_p99_ms": pct(res.ttft, 99),
        "turn_p50_ms": pct(res.turn, 50),
        "turn_p99_ms": pct(res.turn, 99),
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    cfg = Config(**orjson.loads(args[0]))
    raise_fd_limit()
    use_uvloop()
    result = asyncio.run(run(cfg))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
