"""The bare relay parley is measured against: Starlette on uvicorn, an upstream client, orjson.

No auth, no database, no cost, no events bus: `POST /relay` streams one chat completion from the
upstream and re-emits each content delta as a parley-style SSE frame (`event: content_delta`,
then `done`), one `yield` per upstream read. It is the floor for what a Python relay costs per
token and per turn on this machine, measured in the same run as parley.

    python -m bench.relay --upstream http://127.0.0.1:PORT/v1 [--port 0] [--client aiohttp|httpx2]

prints `PORT <n>` once listening. Loopback only; runs in its own process.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from bench.upstream import raise_fd_limit

BODY = orjson.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1024,
    }
)
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json", "Accept": "text/event-stream"}


def _frames(chunk: bytes, state: list[bytes]) -> bytes:
    """Upstream SSE bytes -> parley-style frames for every complete event in them."""
    buf = state[0] + chunk
    end = buf.rfind(b"\n\n")
    if end < 0:
        state[0] = buf
        return b""
    state[0] = buf[end + 2 :]
    out = []
    for block in buf[:end].split(b"\n\n"):
        if not block.startswith(b"data: {"):
            continue
        obj = orjson.loads(block[6:])
        choices = obj.get("choices")
        if choices:
            delta = choices[0].get("delta") or {}
            content = delta.get("content")
            if content:
                out.append(
                    b"event: content_delta\ndata: "
                    + orjson.dumps({"type": "content_delta", "delta": content})
                    + b"\n\n"
                )
    return b"".join(out)


def build_app(upstream: str, client: str) -> Starlette:
    url = upstream.rstrip("/") + "/chat/completions"
    holder: dict[str, Any] = {}

    async def relay_aiohttp() -> AsyncIterator[bytes]:
        import aiohttp

        if "session" not in holder:
            holder["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        state = [b""]
        async with holder["session"].post(url, data=BODY, headers=HEADERS) as response:
            async for chunk in response.content.iter_any():
                out = _frames(chunk, state)
                if out:
                    yield out
        yield b'event: done\ndata: {"type":"done"}\n\n'

    async def relay_httpx2() -> AsyncIterator[bytes]:
        import httpx2

        if "client" not in holder:
            limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
            holder["client"] = httpx2.AsyncClient(limits=limits, timeout=60)
        state = [b""]
        async with holder["client"].stream("POST", url, content=BODY, headers=HEADERS) as response:
            async for chunk in response.aiter_raw():
                out = _frames(chunk, state)
                if out:
                    yield out
        yield b'event: done\ndata: {"type":"done"}\n\n'

    relay = relay_aiohttp if client == "aiohttp" else relay_httpx2

    async def endpoint(request: Request) -> StreamingResponse:
        await request.body()
        return StreamingResponse(relay(), media_type="text/event-stream")

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/relay", endpoint, methods=["POST"]), Route("/healthz", healthz)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client", choices=("aiohttp", "httpx2"), default="aiohttp")
    args = parser.parse_args()
    raise_fd_limit()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        build_app(args.upstream, args.client),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
