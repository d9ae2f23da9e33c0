"""Authentication, permissions and tenancy on every route."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from parley import cli
from parley.store import admin
from parley.store.db import Database
from tests.api.conftest import API, Shared, assert_error, create_session, detail, wait_until
from tests.conftest import DatabaseUrls, ServerFactory, Tenants, client
from tests.support.scripted_provider import ScriptedProvider
from tests.support.sse_client import read_stream

MISSING = "00000000-0000-4000-8000-000000000000"

# (method, path, json body); {sid} is a session of user a1.
SESSION_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/sessions/{sid}", None),
    ("PATCH", "/sessions/{sid}", {"title": "hijacked"}),
    ("DELETE", "/sessions/{sid}", None),
    ("POST", "/sessions/{sid}/messages", {"content": "hello"}),
    ("GET", "/sessions/{sid}/events", None),
    ("POST", "/sessions/{sid}/interrupt", None),
    ("POST", "/sessions/{sid}/pause", {"paused": True}),
    ("POST", "/sessions/{sid}/approve-plan", {"approved": True}),
    ("POST", "/sessions/{sid}/abort-plan", None),
    ("POST", "/sessions/{sid}/approve/00000000-0000-4000-8000-000000000000", {"approved": True}),
    ("POST", "/sessions/{sid}/tool-decisions", {"decisions": [{"executionId": "x", "approved": True}]}),
    ("GET", "/sessions/{sid}/tool-executions", None),
    ("GET", "/sessions/{sid}/tools", None),
]
OTHER_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/sessions", {}),
    ("GET", "/sessions", None),
    ("GET", "/sessions/search?q=hello", None),
    ("GET", "/usage", None),
]
ALL_ROUTES = SESSION_ROUTES + OTHER_ROUTES
WRITE_ROUTES = [r for r in ALL_ROUTES if r[0] != "GET"]
READ_ROUTES = [r for r in ALL_ROUTES if r[0] == "GET" and not r[1].endswith("/events")]


@dataclass
class Answer:
    status_code: int
    headers: Any
    body: Any

    @property
    def text(self) -> str:
        return repr(self.body)


def _call(c: Any, method: str, path: str, body: Any, sid: str) -> Answer:
    """Any route, streamed or not: its status, headers and JSON body (None for an SSE answer)."""
    with c.stream(method, API + path.format(sid=sid), json=body) as r:
        stream = read_stream(r)
        return Answer(r.status_code, r.headers, stream.body)


@pytest.fixture(scope="module")
def a1_session(shared: Shared) -> str:
    with shared.client(shared.tenants.a1) as c:
        return create_session(c, title="a1's private session")


BAD_HEADERS = {
    "missing": None,
    "basic scheme": "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    "bearer without token": "Bearer",
    "wrong scheme": "Token prl_abcdef",
    "unknown token": "Bearer prl_" + "x" * 43,
    "not a parley token": "Bearer sk-abc",
    "overlong token": "Bearer prl_" + "y" * 200,
}


BAD_HEADERS = {**BAD_HEADERS, "revoked token": "Bearer {revoked}"}


@pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES, ids=[f"{m} {p}" for m, p, _ in ALL_ROUTES])
def test_bad_credentials_are_401_with_www_authenticate(
    shared: Shared, a1_session: str, method: str, path: str, body: Any
) -> None:
    for name, value in BAD_HEADERS.items():
        headers = {"Authorization": value.format(revoked=shared.tenants.a1_revoked)} if value is not None else {}
        with shared.client(None, headers=headers) as c:
            r = _call(c, method, path, body, a1_session)
        assert r.status_code == 401, name
        assert r.body["code"] == "unauthorized", name
        assert set(r.body) == {"error", "code"}, name
        assert r.headers["www-authenticate"] == "Bearer", name


def test_authentication_comes_before_body_parsing(shared: Shared, a1_session: str) -> None:
    """An anonymous caller learns nothing about the body: 401, not 400/413/422."""
    with shared.client(None) as c:
        for path in ("/sessions", f"/sessions/{a1_session}/messages"):
            r = c.post(API + path, json={"unknown": 1})
            assert_error(r, 401, "unauthorized")
            r = c.post(API + path, content=b"{not json", headers={"content-type": "application/json"})
            assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), WRITE_ROUTES, ids=[f"{m} {p}" for m, p, _ in WRITE_ROUTES])
def test_read_only_token_is_403_on_write_routes(
    shared: Shared, a1_session: str, method: str, path: str, body: Any
) -> None:
    with shared.client(shared.tenants.a1_read_only) as c:
        r = _call(c, method, path, body, a1_session)
        assert r.status_code == 403
        assert r.body == {"error": "This token is read-only.", "code": "forbidden"}
    with shared.client(shared.tenants.a1) as c:
        session = detail(c, a1_session)
    assert session["session"]["status"] == "active"
    assert session["session"]["title"] == "a1's private session"
    assert session["messages"] == []


@pytest.mark.parametrize(("method", "path", "body"), READ_ROUTES, ids=[f"{m} {p}" for m, p, _ in READ_ROUTES])
def test_read_only_token_may_read(shared: Shared, a1_session: str, method: str, path: str, body: Any) -> None:
    with shared.client(shared.tenants.a1_read_only) as c:
        r = _call(c, method, path, body, a1_session)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("method", "path", "body"), SESSION_ROUTES, ids=[f"{m} {p}" for m, p, _ in SESSION_ROUTES])
@pytest.mark.parametrize("who", ["b1", "a2"])
def test_foreign_session_is_404_on_every_session_route(
    shared: Shared, a1_session: str, method: str, path: str, body: Any, who: str
) -> None:
    with shared.client(getattr(shared.tenants, who)) as c:
        r = _call(c, method, path, body, a1_session)
        assert r.status_code == 404
        assert r.body == {"error": "Session not found.", "code": "session_not_found"}
        # Indistinguishable from a session that does not exist at all.
        missing = _call(c, method, path, body, MISSING)
        assert missing.status_code == 404
        assert missing.body == r.body
    with shared.client(shared.tenants.a1) as c:
        session = detail(c, a1_session)
    assert session["session"]["status"] == "active"
    assert session["session"]["title"] == "a1's private session"
    assert session["messages"] == []


def test_foreign_sessions_do_not_appear_in_list_or_search(shared: Shared, a1_session: str) -> None:
    for who in ("a2", "b1"):
        with shared.client(getattr(shared.tenants, who)) as c:
            listed = [s["id"] for s in c.get(f"{API}/sessions", params={"limit": 50}).json()["data"]]
            found = [s["id"] for s in c.get(f"{API}/sessions/search", params={"q": "private"}).json()["data"]]
        assert a1_session not in listed
        assert a1_session not in found
    with shared.client(shared.tenants.a1) as c:
        found = [s["id"] for s in c.get(f"{API}/sessions/search", params={"q": "private"}).json()["data"]]
    assert a1_session in found


def test_system_token_acts_as_its_user_across_organizations(shared: Shared, a1_session: str) -> None:
    t = shared.tenants
    with shared.client(t.system) as sys_c, shared.client(t.a1) as a1, shared.client(t.a2) as a2:
        assert detail(sys_c, a1_session)["session"]["id"] == a1_session  # same user (a1), any org
        # No home organization: it must say which one.
        assert_error(sys_c.post(f"{API}/sessions", json={}), 422, "validation_error")
        assert_error(sys_c.post(f"{API}/sessions", json={"orgId": MISSING}), 422, "validation_error")
        in_b = sys_c.post(f"{API}/sessions", json={"orgId": t.org_b})
        assert in_b.status_code == 201
        assert in_b.json()["orgId"] == t.org_b
        sid_b = in_b.json()["id"]
        assert sys_c.get(f"{API}/sessions/{sid_b}").status_code == 200
        # a1's organization-scoped token does not see org B, even for its own user.
        assert_error(a1.get(f"{API}/sessions/{sid_b}"), 404, "session_not_found")
        # Owner binding holds for the system scope too: a2's session stays private.
        a2_sid = create_session(a2)
        assert_error(sys_c.get(f"{API}/sessions/{a2_sid}"), 404, "session_not_found")
        listed = {s["id"] for s in sys_c.get(f"{API}/sessions", params={"limit": 50}).json()["data"]}
        assert {a1_session, sid_b} <= listed
        assert a2_sid not in listed
        usage_b = sys_c.get(f"{API}/usage", params={"orgId": t.org_b})
        assert usage_b.status_code == 200


def test_usage_of_a_foreign_org_is_403(shared: Shared) -> None:
    t = shared.tenants
    with shared.client(t.a1) as c:
        assert_error(c.get(f"{API}/usage", params={"orgId": t.org_b}), 403, "forbidden")
        own = c.get(f"{API}/usage", params={"orgId": t.org_a})
        assert own.status_code == 200
        assert set(own.json()) == {"daily", "monthly", "budget"}
    with shared.client(t.b1) as c:
        assert_error(c.get(f"{API}/usage", params={"orgId": t.org_a}), 403, "forbidden")


def test_a_token_revoked_while_the_server_runs_stops_working(make_server: ServerFactory, tenants: Tenants) -> None:
    """With the principal cache off, revocation (from another process: the CLI) is immediate."""
    server = make_server(ScriptedProvider(), PARLEY_AUTH_CACHE_SECONDS="0")

    async def issue_and_revoke(revoke_id: str | None) -> str:
        db = Database(tenants.database_url)
        try:
            if revoke_id is not None:
                await admin.revoke_token(db, revoke_id)
                return revoke_id
            user = await admin.find_user(db, "a2@example.test")
            assert user is not None
            issued = await admin.create_token(db, user_id=user["id"], org_id=user["org_id"])
            return f"{issued.id} {issued.token}"
        finally:
            await db.dispose()

    token_id, token = asyncio.run(issue_and_revoke(None)).split()
    with client(server, token) as c:
        assert c.get(f"{API}/sessions").status_code == 200
        asyncio.run(issue_and_revoke(token_id))
        assert_error(c.get(f"{API}/sessions"), 401, "unauthorized")


def test_revocation_takes_effect_within_the_auth_cache_time_as_the_cli_says(
    make_server: ServerFactory, tenants: Tenants, database: DatabaseUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`parley tokens revoke` says what a running server does: a token it accepted lately may pass
    for up to PARLEY_AUTH_CACHE_SECONDS (5 s by default) more, and not longer."""
    runner = CliRunner()
    help_text = " ".join(runner.invoke(cli.app, ["tokens", "revoke", "--help"], terminal_width=200).output.split())
    assert "at once" not in help_text
    assert "PARLEY_AUTH_CACHE_SECONDS (default 5 s)" in help_text
    assert "PARLEY_AUTH_CACHE_SECONDS=0" in help_text

    server = make_server(ScriptedProvider())  # the default cache time
    token_id, token = asyncio.run(_issue_token(tenants))
    monkeypatch.setenv("DATABASE_URL", database.app)
    monkeypatch.setenv("DATABASE_ADMIN_URL", database.admin)
    with client(server, token) as c:
        accepted_at = time.monotonic()
        assert c.get(f"{API}/sessions").status_code == 200  # now in the server's cache
        result = runner.invoke(cli.app, ["tokens", "revoke", token_id])
        assert result.exit_code == 0, result.output
        if time.monotonic() - accepted_at < 4:  # within the window the help text announces
            assert c.get(f"{API}/sessions").status_code == 200
        wait_until(lambda: c.get(f"{API}/sessions").status_code == 401, timeout=7, interval=0.25)
        assert time.monotonic() - accepted_at < 5 + 1.5
    with client(server, token) as fresh:  # and a new connection is refused too
        assert_error(fresh.get(f"{API}/sessions"), 401, "unauthorized")


async def _issue_token(tenants: Tenants) -> tuple[str, str]:
    db = Database(tenants.database_url)
    try:
        user = await admin.find_user(db, "a2@example.test")
        assert user is not None
        issued = await admin.create_token(db, user_id=user["id"], org_id=user["org_id"])
        return issued.id, issued.token
    finally:
        await db.dispose()
