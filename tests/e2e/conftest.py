"""End-to-end fixtures: a real llama-cpp-python model server, a recording proxy, a real parley.

    test ──HTTP──▶ parley (subprocess, `python -m parley serve`, temp SQLite)
                     └──▶ TcpProxy (loopback, forwards bytes, keeps what parley sent)
                            └──▶ llama_cpp.server (SmolLM2-135M, n_ctx 2048)

The proxy exists because the model server keeps no request log: it is how a test proves that
history really reaches the model. It forwards bytes untouched, both ways, as they arrive.

`scripted_tools` is the same parley with the demo tools in front of a scripted model server
(`tests/support/scripted_upstream.py`) instead: for the replies the small model cannot be made to
give on demand (a given tool call with given arguments, a Markdown answer).

Nothing here is skipped: without llama-cpp-python or the model the suite FAILS and says how to
install them (`python -m parley.local.install`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from parley.local.demo import notes_dir, write_demo_tools_config
from parley.local.model_server import (
    LocalModelServer,
    ModelServerError,
    free_port,
    llama_server_installed,
    locate_model,
)
from parley.store import admin
from tests.support.parley_process import ParleyProcess
from tests.support.scripted_upstream import ScriptedUpstream
from tests.support.sse_client import iter_frames
from tests.support.tcp_proxy import TcpProxy

MAX_TOKENS = 256  # long enough to interrupt a story, short enough to keep the suite fast


# -- a small API client that records the stream -----------------------------------------------------


@dataclass
class Turn:
    """One streamed turn: every (event, data) with its arrival time since the POST."""

    status: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    body: bytes = b""

    @property
    def types(self) -> list[str]:
        return [e for e, _ in self.events]

    @property
    def text(self) -> str:
        return "".join(d["delta"] for e, d in self.events if e == "content_delta")

    def first(self, kind: str) -> dict[str, Any]:
        return next(d for e, d in self.events if e == kind)

    def time_of_first(self, kind: str) -> float:
        return next(t for (e, _), t in zip(self.events, self.times, strict=True) if e == kind)

    def deltas(self) -> int:
        return self.types.count("content_delta")


OnEvent = Callable[[str, dict[str, Any], Turn], None]


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx2.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0)
        )

    def close(self) -> None:
        self.http.close()

    def create_session(self, title: str | None = None) -> dict[str, Any]:
        response = self.http.post("/api/v1/ai/sessions", json={"title": title} if title else {})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get_session(self, session_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/ai/sessions/{session_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def interrupt(self, session_id: str) -> httpx2.Response:
        return self.http.post(f"/api/v1/ai/sessions/{session_id}/interrupt")

    def turn(self, session_id: str, content: str, on_event: OnEvent | None = None, **body: Any) -> Turn:
        """POST a message and read its whole SSE stream (until the server closes it)."""
        return self.stream(f"/api/v1/ai/sessions/{session_id}/messages", {"content": content, **body}, on_event)

    def decide(self, session_id: str, execution_id: str, *, approved: bool) -> Turn:
        """Decide a tool call: the continuation's stream, or the JSON answer (in `body`)."""
        return self.stream(f"/api/v1/ai/sessions/{session_id}/approve/{execution_id}", {"approved": approved})

    def stream(self, path: str, body: dict[str, Any], on_event: OnEvent | None = None) -> Turn:
        started = time.monotonic()
        timeout = httpx2.Timeout(30.0, read=120.0)
        with self.http.stream("POST", path, json=body, timeout=timeout) as response:
            turn = Turn(status=response.status_code)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                turn.body = response.read()
                return turn
            for frame in iter_frames(response):
                assert frame.data["type"] == frame.event, (frame.event, frame.data)
                turn.events.append((frame.event, frame.data))
                turn.times.append(time.monotonic() - started)
                if on_event is not None:
                    on_event(frame.event, frame.data, turn)
        return turn


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    if not llama_server_installed():
        pytest.fail("llama-cpp-python[server] is not installed: run `python -m parley.local.install`")
    try:
        locate_model()
    except ModelServerError as exc:
        pytest.fail(f"{exc}")
    server = LocalModelServer(log_path=tmp_path_factory.mktemp("model") / "model-server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(model_server: LocalModelServer) -> Iterator[TcpProxy]:
    recorder = TcpProxy(model_server.port)
    yield recorder
    recorder.close()


async def _issue_token(database_url: str) -> str:
    db = await admin.open_database(database_url)
    try:
        org = await admin.create_organization(db, "e2e")
        user = await admin.create_user(db, org_id=org, email="e2e@parley.local", name="e2e")
        return (await admin.create_token(db, user_id=user, org_id=org, name="e2e")).token
    finally:
        await db.dispose()


@dataclass
class Parley:
    """A running parley, an API token of its one user, and its data directory."""

    parley: ParleyProcess
    token: str
    data_dir: Path

    def api(self) -> Api:
        return Api(self.parley.url, self.token)

    @property
    def notes(self) -> Path:
        """The demo tools' notes file (with the demo tools configured)."""
        return notes_dir(self.data_dir) / "notes.jsonl"


@dataclass
class E2E(Parley):
    model: LocalModelServer
    proxy: TcpProxy


@dataclass
class Scripted(Parley):
    upstream: ScriptedUpstream


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory, model_server: LocalModelServer, proxy: TcpProxy) -> Iterator[E2E]:
    data_dir = tmp_path_factory.mktemp("parley")
    with _parley(data_dir, f"{proxy.url}/v1", model_server.model, model_server.api_key, window=model_server.n_ctx) as (
        parley,
        token,
    ):
        yield E2E(parley=parley, token=token, data_dir=data_dir, model=model_server, proxy=proxy)


@pytest.fixture(scope="session")
def e2e_tools(
    tmp_path_factory: pytest.TempPathFactory, model_server: LocalModelServer, proxy: TcpProxy
) -> Iterator[E2E]:
    """parley with the demo MCP server, configured as `parley demo` does: notes in `notes`."""
    data_dir = tmp_path_factory.mktemp("parley-tools")
    config = str(write_demo_tools_config(data_dir))
    base_url = f"{proxy.url}/v1"
    with _parley(
        data_dir,
        base_url,
        model_server.model,
        model_server.api_key,
        window=model_server.n_ctx,
        PARLEY_MCP_CONFIG=config,
    ) as started:
        parley, token = started
        yield E2E(parley=parley, token=token, data_dir=data_dir, model=model_server, proxy=proxy)


@pytest.fixture
def scripted_tools(tmp_path: Path) -> Iterator[Scripted]:
    """parley with the demo MCP server, in front of a scripted model server (enqueue its replies)."""
    config = str(write_demo_tools_config(tmp_path))
    upstream = ScriptedUpstream().start()
    try:
        with _parley(tmp_path, upstream.base_url, upstream.model, "scripted-key", PARLEY_MCP_CONFIG=config) as started:
            parley, token = started
            yield Scripted(parley=parley, token=token, data_dir=tmp_path, upstream=upstream)
    finally:
        upstream.stop()


@contextlib.contextmanager
def _parley(
    data_dir: Path, base_url: str, model: str, api_key: str, *, window: int | None = None, **extra: str
) -> Iterator[tuple[ParleyProcess, str]]:
    """`parley serve` on SQLite in `data_dir`, on the model server at `base_url` (whose context
    window is `window`, as `parley demo` says it: llama-cpp-python's server does not); and a token."""
    database_url = f"sqlite+aiosqlite:///{data_dir / 'parley.db'}"
    token = asyncio.run(_issue_token(database_url))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(data_dir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PARLEY_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "MCP_LLM_PROVIDER": "openai-compatible",
        "MCP_LLM_BASE_URL": base_url,
        "MCP_LLM_MODEL": model,
        "MCP_LLM_API_KEY": api_key,
        "MCP_LLM_MAX_TOKENS": str(MAX_TOKENS),
        "PARLEY_UPSTREAM_RETRIES": "1",
        "PARLEY_CONNECT_TIMEOUT_SECONDS": "5",
        **extra,
    }
    if window is not None:
        env["MCP_LLM_CONTEXT_WINDOW"] = str(window)
    parley = ParleyProcess(env, free_port(), data_dir / "parley.log")
    parley.start()
    try:
        yield parley, token
    finally:
        parley.stop()


@pytest.fixture
def api(e2e: E2E) -> Iterator[Api]:
    client = e2e.api()
    yield client
    client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With several test processes (`make test`), the end-to-end tests run in one of them: one
    model server, not one per process competing for the same cores."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("local-model"))
