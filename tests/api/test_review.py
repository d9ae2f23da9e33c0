"""Flags and the admin routes, on both databases: who may flag and unflag, what an admin token
reads, and that an admin of organization A sees nothing of organization B."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from parley import cli
from parley.store import admin
from parley.store.db import Database
from parley.store.models import AiToolExecution
from tests.api.conftest import API, assert_error, create_session, detail, send
from tests.api.test_audit import events
from tests.conftest import DatabaseUrls, ServerFactory, Tenants, client
from tests.support.inspect_db import in_db
from tests.support.live_server import LiveServer
from tests.support.scripted_provider import ScriptedProvider

ADMIN_ROUTES = ["/admin/sessions", "/admin/security-events", "/admin/tool-executions"]


@dataclass
class Admins:
    a: str  # admin token of organization A (user a2)
    b: str  # admin token of organization B (user b1)
    system: str  # admin token with system scope (user a1)


async def _issue(tenants: Tenants) -> Admins:
    db = Database(tenants.database_url)
    try:

        async def token(email: str, *, system: bool = False) -> str:
            user = await admin.find_user(db, email)
            assert user is not None
            scope = "system" if system else "organization"
            org = None if system else user["org_id"]
            return (await admin.create_token(db, user_id=user["id"], org_id=org, scope=scope, is_admin=True)).token

        return Admins(
            a=await token("a2@example.test"),
            b=await token("b1@example.test"),
            system=await token("a1@example.test", system=True),
        )
    finally:
        await db.dispose()


@pytest.fixture
def admins(tenants: Tenants) -> Admins:
    return asyncio.run(_issue(tenants))


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make_server(ScriptedProvider())


def _get(c: httpx2.Client, path: str, **params: Any) -> dict[str, Any]:
    r = c.get(API + path, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# --- flags ------------------------------------------------------------------------------------------


def test_an_owner_flags_its_session_and_only_an_admin_clears_it(
    server: LiveServer, tenants: Tenants, admins: Admins
) -> None:
    with (
        client(server, tenants.a1) as a1,
        client(server, tenants.a2) as a2,
        client(server, tenants.a1_read_only) as reader,
        client(server, admins.a) as admin_a,
        client(server, admins.b) as admin_b,
    ):
        sid = create_session(a1)
        assert a1.post(f"{API}/sessions/{sid}/flag", json={"reason": "  it said  something odd "}).json() == {
            "success": True
        }
        flagged = detail(a1, sid)["session"]
        assert flagged["flaggedBy"] == flagged["userId"]
        assert flagged["flagReason"] == "it said something odd"
        assert flagged["flaggedAt"].endswith("Z")
        assert_error(reader.post(f"{API}/sessions/{sid}/flag"), 403, "forbidden")
        assert_error(a2.post(f"{API}/sessions/{sid}/flag"), 404, "session_not_found")  # not its own
        assert_error(a1.delete(f"{API}/sessions/{sid}/flag"), 403, "forbidden")  # an owner may not clear it
        assert_error(admin_b.delete(f"{API}/sessions/{sid}/flag"), 404, "session_not_found")  # another org
        assert detail(a1, sid)["session"]["flagReason"] == "it said something odd"
        assert admin_a.delete(f"{API}/sessions/{sid}/flag").json() == {"success": True}
        cleared = detail(a1, sid)["session"]
        assert (cleared["flaggedAt"], cleared["flaggedBy"], cleared["flagReason"]) == (None, None, None)
        # An admin flags any session of its organization, without a body.
        assert admin_a.post(f"{API}/sessions/{sid}/flag").json() == {"success": True}
        assert detail(a1, sid)["session"]["flagReason"] is None
        assert_error(admin_b.post(f"{API}/sessions/{sid}/flag"), 404, "session_not_found")
        assert_error(a1.post(f"{API}/sessions/{sid}/flag", json={"reason": "x" * 1001}), 422, "validation_error")
    assert [e.action for e in events(tenants) if "flag" in e.action] == [
        "ai.session.flag",
        "ai.session.unflag",
        "ai.session.flag",
    ]


# --- what an admin reads -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_ROUTES)
def test_admin_routes_need_an_admin_token(server: LiveServer, tenants: Tenants, path: str) -> None:
    for token in (tenants.a1, tenants.a1_read_only, tenants.system):
        with client(server, token) as c:
            assert_error(c.get(API + path), 403, "forbidden")
    with client(server, None) as anonymous:
        assert_error(anonymous.get(API + path), 401, "unauthorized")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        assert_error(c.get(f"{API}/admin/sessions/{sid}"), 403, "forbidden")


def test_an_admin_lists_every_session_of_its_organization_and_none_of_another(
    server: LiveServer, tenants: Tenants, admins: Admins
) -> None:
    with (
        client(server, tenants.a1) as a1,
        client(server, tenants.a2) as a2,
        client(server, tenants.b1) as b1,
        client(server, admins.a) as admin_a,
        client(server, admins.b) as admin_b,
        client(server, admins.system) as admin_all,
    ):
        first = create_session(a1, title="first")
        second = create_session(a2, title="second")
        third = create_session(a1, title="third")
        theirs = create_session(b1, title="theirs")
        a1.post(f"{API}/sessions/{third}/flag", json={"reason": "check"})
        a1.delete(f"{API}/sessions/{first}")
        listed = _get(admin_a, "/admin/sessions")
        assert listed["total"] == 3
        assert {s["id"] for s in listed["data"]} == {first, second, third}
        by_id = {s["id"]: s for s in listed["data"]}
        assert by_id[second]["userEmail"] == "a2@example.test"
        assert by_id[third]["flagReason"] == "check"
        assert by_id[first]["status"] == "closed"
        flagged = _get(admin_a, "/admin/sessions", flagged="true")
        assert [s["id"] for s in flagged["data"]] == [third]
        assert {s["id"] for s in _get(admin_a, "/admin/sessions", flagged="false")["data"]} == {first, second}
        assert [s["id"] for s in _get(admin_a, "/admin/sessions", status="closed")["data"]] == [first]
        assert {s["id"] for s in _get(admin_a, "/admin/sessions", userId=by_id[first]["userId"])["data"]} == {
            first,
            third,
        }
        page = _get(admin_a, "/admin/sessions", limit=2, offset=2)
        assert (len(page["data"]), page["total"], page["offset"]) == (1, 3, 2)
        assert [s["id"] for s in _get(admin_b, "/admin/sessions")["data"]] == [theirs]
        assert _get(admin_b, "/admin/sessions", flagged="true")["data"] == []
        assert {s["id"] for s in _get(admin_all, "/admin/sessions")["data"]} == {first, second, third, theirs}
        assert_error(admin_a.get(f"{API}/admin/sessions", params={"limit": 101}), 422, "validation_error")


def test_an_admin_reads_a_transcript_of_its_organization_and_the_read_is_audited(
    server: LiveServer, tenants: Tenants, admins: Admins
) -> None:
    with client(server, tenants.a1) as a1, client(server, admins.a) as admin_a, client(server, admins.b) as admin_b:
        sid = create_session(a1)
        assert send(a1, sid, "what is the capital of France?").types[-1] == "done"
        r = admin_a.get(f"{API}/admin/sessions/{sid}", headers={"X-Request-ID": "review-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["session"]["id"] == sid
        assert body["session"]["userEmail"] == "a1@example.test"
        assert [(m["role"], m["content"]) for m in body["messages"]] == [
            ("user", "what is the capital of France?"),
            ("assistant", "Hello there!"),
        ]
        assert body["executions"] == []
        assert_error(admin_b.get(f"{API}/admin/sessions/{sid}"), 404, "session_not_found")
        assert_error(admin_a.get(f"{API}/admin/sessions/{'0' * 36}"), 404, "session_not_found")
    (read,) = events(tenants, action="ai.admin.session.read")
    assert (read.request_id, read.session_id, read.org_id) == ("review-1", sid, tenants.org_a)
    assert [e.org_id for e in events(tenants, action="ai.security.cross_tenant_access")] == [tenants.org_b]


def test_security_events_of_an_admins_organization_only(server: LiveServer, tenants: Tenants, admins: Admins) -> None:
    with client(server, tenants.a1) as a1, client(server, tenants.b1) as b1:
        sid = create_session(a1)
        b1.get(f"{API}/sessions/{sid}")  # B probes A's session: B's event
    with client(server, tenants.a1_revoked) as revoked:
        revoked.get(f"{API}/sessions")  # A's event
    with client(server, admins.a) as admin_a, client(server, admins.b) as admin_b:
        seen_a = _get(admin_a, "/admin/security-events")["data"]
        seen_b = _get(admin_b, "/admin/security-events")["data"]
        assert [e["action"] for e in seen_a] == ["ai.security.revoked_token_used"]
        assert [(e["action"], e["sessionId"], e["orgId"]) for e in seen_b] == [
            ("ai.security.cross_tenant_access", sid, tenants.org_b)
        ]
        assert set(seen_a[0]) >= {"id", "createdAt", "userId", "requestId", "clientIp", "userAgent", "detail"}
        # One action's events, whatever it is; and a window that starts later shows nothing.
        assert [e["action"] for e in _get(admin_a, "/admin/security-events", action="ai.session.create")["data"]] == [
            "ai.session.create"
        ]
        later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert _get(admin_a, "/admin/security-events", since=later)["data"] == []
        naive = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()  # read as UTC
        assert len(_get(admin_a, "/admin/security-events", since=naive)["data"]) == 1
        assert_error(
            admin_a.get(f"{API}/admin/security-events", params={"since": "yesterday"}), 422, "validation_error"
        )


def _plant_executions(tenants: Tenants, rows: list[tuple[str, str, str, str, datetime, int | None]]) -> None:
    """(org, session, tool, status, created, duration ms) of tool calls, stored as the turn stores them."""

    async def work(s: AsyncSession) -> None:
        for i, (org, sid, tool, status, created, duration) in enumerate(rows):
            s.add(
                AiToolExecution(
                    id=f"00000000-0000-4000-8000-{i:012d}",
                    org_id=org,
                    session_id=sid,
                    message_id="m",
                    round=1,
                    call_index=i,
                    tool_use_id=f"call_{i}",
                    tool_name=tool,
                    input={},
                    input_hash="h",
                    status=status,
                    requires_approval=False,
                    is_error=status == "failed",
                    truncated=False,
                    duration_ms=duration,
                    created_at=created,
                )
            )

    in_db(tenants.database_url, work)


def test_the_tool_call_summary_of_an_admins_organization(server: LiveServer, tenants: Tenants, admins: Admins) -> None:
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    hour_ago, two_hours_ago = now - timedelta(hours=1), now - timedelta(hours=2)
    with client(server, tenants.a1) as a1, client(server, tenants.b1) as b1:
        ours, theirs = create_session(a1), create_session(b1)
    a, b = tenants.org_a, tenants.org_b
    _plant_executions(
        tenants,
        [
            (a, ours, "t__record", "completed", two_hours_ago, 100),
            (a, ours, "t__record", "completed", hour_ago, 300),
            (a, ours, "t__record", "failed", hour_ago, None),
            (a, ours, "t__clock", "refused", hour_ago, None),
            (a, ours, "t__clock", "completed", now - timedelta(days=3), 5),  # outside the default day
            (b, theirs, "t__record", "completed", hour_ago, 7),
        ],
    )
    with client(server, admins.a) as admin_a, client(server, admins.b) as admin_b:
        report = _get(admin_a, "/admin/tool-executions")
        assert report["bucket"] == "hour"
        assert report["summary"]["total"] == 4
        assert report["summary"]["byStatus"] == {"completed": 2, "failed": 1, "refused": 1}
        assert report["summary"]["byTool"] == [
            {"toolName": "t__record", "total": 3, "byStatus": {"completed": 2, "failed": 1}, "avgDurationMs": 200.0},
            {"toolName": "t__clock", "total": 1, "byStatus": {"refused": 1}, "avgDurationMs": None},
        ]
        slot = "%Y-%m-%dT%H:00:00Z"
        assert report["timeSeries"] == [
            {"bucket": two_hours_ago.strftime(slot), "total": 1, "byStatus": {"completed": 1}},
            {"bucket": hour_ago.strftime(slot), "total": 3, "byStatus": {"completed": 1, "failed": 1, "refused": 1}},
        ]
        assert len(report["executions"]) == 4
        assert report["executions"][0]["createdAt"] >= report["executions"][-1]["createdAt"]
        # Filters, a longer window (by day), and another organization's admin.
        only = _get(admin_a, "/admin/tool-executions", status="completed", toolName="t__record")
        assert only["summary"]["total"] == 2
        week = _get(admin_a, "/admin/tool-executions", since=(now - timedelta(days=7)).isoformat())
        assert (week["bucket"], week["summary"]["total"]) == ("day", 5)
        assert {row["bucket"][-10:] for row in week["timeSeries"]} == {"T00:00:00Z"}
        assert _get(admin_b, "/admin/tool-executions")["summary"]["byStatus"] == {"completed": 1}
        limited = _get(admin_a, "/admin/tool-executions", limit=1)
        assert (len(limited["executions"]), limited["summary"]["total"]) == (1, 4)
        backwards = {"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()}
        assert_error(admin_a.get(f"{API}/admin/tool-executions", params=backwards), 422, "validation_error")
        huge = {"since": (now - timedelta(days=400)).isoformat()}
        assert_error(admin_a.get(f"{API}/admin/tool-executions", params=huge), 422, "validation_error")
        early = {"until": "0001-01-01T00:00:00"}
        assert_error(admin_a.get(f"{API}/admin/tool-executions", params=early), 422, "validation_error")


def test_the_cli_issues_admin_tokens(
    server: LiveServer, tenants: Tenants, database: DatabaseUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database.app)
    monkeypatch.setenv("DATABASE_ADMIN_URL", database.admin)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["tokens", "create", "--user", "a2@example.test", "--admin", "--name", "review"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    listed = runner.invoke(cli.app, ["tokens", "list", "--user", "a2@example.test"])
    assert next(line for line in listed.output.splitlines() if "review" in line).endswith("admin")
    with client(server, token) as c:
        assert _get(c, "/admin/sessions")["data"] == []
