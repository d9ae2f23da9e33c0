"""Request ids: every answer carries `X-Request-ID` (the client's own when it is a sane one), the
turn's stream and errors included, and the log lines of a request and of the turn it started
carry it too (`PARLEY_LOG_FORMAT=json`: one JSON object per line)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx2
import pytest
from fastapi import FastAPI

from parley.local.model_server import free_port
from tests.api.conftest import API, Shared, create_session
from tests.api.test_http_edges import exchange, parse
from tests.conftest import ServerFactory, Tenants, base_env, client
from tests.support.parley_process import ParleyProcess
from tests.support.scripted_provider import ScriptedProvider
from tests.support.scripted_upstream import Reply, ScriptedUpstream
from tests.support.sse_client import read_stream

ROOT = Path(__file__).resolve().parents[2]
NEW_ID = re.compile(r"[0-9a-f]{24}")


def test_every_answer_carries_a_request_id(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c, shared.client(None) as anonymous:
        sid = create_session(c)
        answers = {
            "liveness": anonymous.get("/healthz"),
            "page": anonymous.get("/"),
            "static file": anonymous.get("/static/favicon.svg"),
            "unknown route": c.get(f"{API}/nowhere"),
            "no token": anonymous.get(f"{API}/sessions"),
            "bad body": c.post(f"{API}/sessions", json={"title": 5}),
            "wrong method": c.put(f"{API}/sessions"),
            "a list": c.get(f"{API}/sessions"),
        }
        for name, r in answers.items():
            assert NEW_ID.fullmatch(r.headers.get("x-request-id", "")), name
        assert len({r.headers["x-request-id"] for r in answers.values()}) == len(answers)  # one per request
        with c.stream(
            "POST", f"{API}/sessions/{sid}/messages", json={"content": "hi"}, headers={"X-Request-ID": "turn-1"}
        ) as r:
            turn = read_stream(r)
        assert turn.types[-1] == "done"
        assert turn.headers["x-request-id"] == "turn-1"
        refused = c.post(f"{API}/sessions/{'0' * 36}/messages", json={"content": "hi"}, headers={"X-Request-ID": "e"})
        assert (refused.status_code, refused.headers["x-request-id"]) == (404, "e")


def test_a_head_refused_before_the_app_still_gets_an_id(shared: Shared) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    status, headers, _ = parse(exchange(shared.server, raw)[0])
    assert status == 431
    assert NEW_ID.fullmatch(headers["x-request-id"])


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-DEF_1.2:3", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("two words", False),
        ("semi;colon", False),
        ("ünïcode", False),
    ],
)
def test_a_clients_request_id_is_kept_only_when_it_is_sane(shared: Shared, given: str, kept: bool) -> None:
    with shared.client(None) as c:
        r = c.get("/healthz", headers={"X-Request-ID": given.encode()})  # UTF-8 bytes, as sent
    assert r.headers["x-request-id"] == given if kept else NEW_ID.fullmatch(r.headers["x-request-id"])


def test_an_unexpected_error_carries_its_request_id(make_server: ServerFactory, tenants: Tenants) -> None:
    def add_failing_route(app: FastAPI) -> None:
        async def fail() -> None:
            raise RuntimeError("a bug")

        app.add_api_route("/fail", fail)

    server = make_server(ScriptedProvider(), app_hook=add_failing_route)
    with client(server, None) as c:
        r = c.get("/fail", headers={"X-Request-ID": "bug-1"})
    assert (r.status_code, r.json()["code"], r.headers["x-request-id"]) == (500, "internal_error", "bug-1")
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_log_lines_of_a_request_and_its_turn_carry_its_id(tenants: Tenants, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    with ScriptedUpstream() as upstream:
        upstream.enqueue(Reply(500, {"error": {"message": "boom"}}), Reply(500, {"error": {"message": "boom"}}))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_", "DATABASE_"))},
            **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
            "PYTHONPATH": str(ROOT / "src"),
            "PARLEY_LOG_FORMAT": "json",
            "PARLEY_UPSTREAM_RETRIES": "1",
        }
        process = ParleyProcess(env, free_port(), data_dir / "parley.log").start()
        try:
            with httpx2.Client(base_url=process.url, headers={"Authorization": f"Bearer {tenants.a1}"}) as c:
                sid = create_session(c)
                with c.stream(
                    "POST", f"{API}/sessions/{sid}/messages", json={"content": "hi"}, headers={"X-Request-ID": "log-1"}
                ) as r:
                    turn = read_stream(r)
                assert turn.of("error")[0].data["code"] == "upstream_error"
        finally:
            process.stop()
    lines = [json.loads(line) for line in (data_dir / "parley.log").read_text().splitlines() if line.strip()]
    fields = {"time", "level", "logger", "message", "request_id", "org", "session", "turn"}
    assert all(set(line) >= fields for line in lines)
    reply_id = turn.of("message_start")[0].data["messageId"]
    of_the_turn = [line for line in lines if line["turn"] == reply_id]
    # The model server's two refusals, the retry between them, and the turn's failure.
    assert {line["logger"] for line in of_the_turn} >= {"parley.providers", "parley.turns"}
    assert len(of_the_turn) >= 4
    assert {(line["request_id"], line["session"], line["org"]) for line in of_the_turn} == {
        ("log-1", sid, tenants.org_a)
    }
    assert [line for line in lines if line["request_id"] == "log-1"] == of_the_turn
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's lines are JSON too
