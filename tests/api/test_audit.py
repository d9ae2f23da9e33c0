"""The audit trail through the API, on both databases: each change writes its event in its own
transaction (an event that cannot be written undoes the change), stamped with the request's id,
address and user agent; refusals write security events of their own.
"""

from __future__ import annotations

from typing import Any

import httpx2
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from parley.store.models import AiAuditEvent, AiBudget, AiMessage, AiSession
from tests.api.conftest import API, assert_error, create_session, detail, open_turn, send
from tests.api.tooling import Tools, pending_call, quoting_the_result
from tests.conftest import DatabaseUrls, ServerFactory, Tenants, client
from tests.support.inspect_db import in_db
from tests.support.scripted_provider import Reply, ScriptedProvider, tool_call

AGENT = "audit-test/1.0"


def events(tenants: Tenants, *, action: str | None = None) -> list[AiAuditEvent]:
    async def work(s: AsyncSession) -> list[AiAuditEvent]:
        query = sa.select(AiAuditEvent).order_by(AiAuditEvent.id)
        if action is not None:
            query = query.where(AiAuditEvent.action == action)
        return list((await s.execute(query)).scalars())

    return in_db(tenants.database_url, work)


def count(tenants: Tenants, model: type[Any]) -> int:
    async def work(s: AsyncSession) -> int:
        return int((await s.execute(sa.select(sa.func.count()).select_from(model))).scalar_one())

    return in_db(tenants.database_url, work)


def refuse_audit(database: DatabaseUrls, *actions: str) -> None:
    """Make the database refuse to store events of these actions (a trigger, as the owner); none
    given: store them all again."""

    async def work(s: AsyncSession) -> None:
        listed = ", ".join(f"'{action}'" for action in actions) or "''"
        if database.kind == "sqlite":
            await s.execute(sa.text("DROP TRIGGER IF EXISTS refuse_audit"))
            await s.execute(
                sa.text(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON ai_audit_events "
                    f"WHEN NEW.action IN ({listed}) BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
                )
            )
            return
        await s.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.action IN ({listed}) THEN RAISE EXCEPTION 'audit refused'; END IF; RETURN NEW; END $$"
            )
        )
        await s.execute(sa.text("DROP TRIGGER IF EXISTS refuse_audit ON ai_audit_events"))
        await s.execute(
            sa.text(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON ai_audit_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )
        )

    in_db(database.admin, work)


def as_client(c: httpx2.Client, request_id: str) -> dict[str, str]:
    return {"X-Request-ID": request_id, "User-Agent": AGENT}


def test_every_change_is_audited_with_its_request(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=["Hi"]), Reply(tokens=[f"w{i} " for i in range(40)], delay=0.03))
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        r = c.post(f"{API}/sessions", json={}, headers=as_client(c, "req-create"))
        sid = r.json()["id"]
        user_id = detail(c, sid)["session"]["userId"]
        with c.stream(
            "POST", f"{API}/sessions/{sid}/messages", json={"content": "hello"}, headers=as_client(c, "req-send")
        ) as turn:
            assert turn.status_code == 200
            turn.read()
        with open_turn(c, sid, "a long story") as long_turn:
            long_turn.deltas(2)
            assert other.post(f"{API}/sessions/{sid}/interrupt", headers=as_client(c, "req-stop")).status_code == 200
            long_turn.rest()
        assert c.post(f"{API}/sessions/{sid}/flag", json={"reason": "odd"}, headers=as_client(c, "req-flag")).is_success
        assert c.put(f"{API}/budget", json={"dailyBudgetCents": 500}, headers=as_client(c, "req-budget")).is_success
        assert c.delete(f"{API}/sessions/{sid}", headers=as_client(c, "req-close")).is_success
    rows = events(tenants)
    assert [(e.action, e.request_id) for e in rows if e.request_id != long_turn_id(rows)] == [
        ("ai.session.create", "req-create"),
        ("ai.message.send", "req-send"),
        ("ai.message.interrupt", "req-stop"),
        ("ai.session.flag", "req-flag"),
        ("ai.budget.update", "req-budget"),
        ("ai.session.close", "req-close"),
    ]
    for event in rows:
        assert (event.org_id, event.actor_user_id) == (tenants.org_a, user_id)
        assert event.session_id == (None if event.action == "ai.budget.update" else sid)
        assert event.client_ip == "127.0.0.1"
        assert event.created_at is not None
    stamped = [e for e in rows if e.request_id and e.request_id.startswith("req-")]
    assert {e.user_agent for e in stamped} == {AGENT}
    by_action = {e.action: e for e in rows}
    assert by_action["ai.budget.update"].detail == {"fields": ["daily_budget_cents"]}
    assert by_action["ai.session.flag"].detail == {"reason": True, "byAdmin": False}
    assert by_action["ai.message.interrupt"].detail["interrupted"] is True
    # Ids and facts only: the messages' text is nowhere in the trail.
    assert "hello" not in str([e.detail for e in rows])
    assert "story" not in str([e.detail for e in rows])


def long_turn_id(rows: list[AiAuditEvent]) -> str | None:
    """The request id of the second message (sent without one of its own: a new id)."""
    sends = [e for e in rows if e.action == "ai.message.send"]
    assert len(sends) == 2
    assert sends[1].request_id
    assert not sends[1].request_id.startswith("req-")
    return sends[1].request_id


def test_an_event_that_cannot_be_stored_undoes_its_change(
    make_server: ServerFactory, tenants: Tenants, database: DatabaseUrls
) -> None:
    server = make_server(ScriptedProvider())
    # The server closes a connection after an unexpected error: a new one for each request.
    with client(server, tenants.a1, limits=httpx2.Limits(max_keepalive_connections=0)) as c:
        sid = create_session(c)
        refuse_audit(database, "ai.session.create", "ai.message.send", "ai.session.flag", "ai.budget.update")
        assert_error(c.post(f"{API}/sessions", json={}), 500, "internal_error")
        assert count(tenants, AiSession) == 1
        assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "hi"}), 500, "internal_error")
        assert count(tenants, AiMessage) == 0
        assert_error(c.post(f"{API}/sessions/{sid}/flag"), 500, "internal_error")
        assert detail(c, sid)["session"]["flaggedAt"] is None
        assert_error(c.put(f"{API}/budget", json={"dailyBudgetCents": 1}), 500, "internal_error")
        assert count(tenants, AiBudget) == 0
        refuse_audit(database, "ai.session.close")
        assert_error(c.delete(f"{API}/sessions/{sid}"), 500, "internal_error")
        assert detail(c, sid)["session"]["status"] == "active"
        assert [e.action for e in events(tenants)] == ["ai.session.create"]
        # Stored again: every one of them goes through, with its event (the lease was not left held).
        refuse_audit(database)
        assert send(c, sid).types[-1] == "done"
        assert c.post(f"{API}/sessions/{sid}/flag").is_success
        assert c.delete(f"{API}/sessions/{sid}").is_success
    assert [e.action for e in events(tenants)] == [
        "ai.session.create",
        "ai.message.send",
        "ai.session.flag",
        "ai.session.close",
    ]


def test_a_refused_change_writes_no_event(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c, client(server, tenants.a1_read_only) as reader:
        sid = create_session(c)
        assert_error(reader.delete(f"{API}/sessions/{sid}"), 403, "forbidden")
        assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "  "}), 422, "validation_error")
        assert_error(c.delete(f"{API}/sessions/{'0' * 36}"), 404, "session_not_found")
    assert [e.action for e in events(tenants)] == ["ai.session.create"]


# --- security events ---------------------------------------------------------------------------------


def test_a_revoked_token_is_refused_and_recorded(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1_revoked) as c:
        assert_error(c.get(f"{API}/sessions", headers={"X-Request-ID": "req-revoked"}), 401, "unauthorized")
    (event,) = events(tenants, action="ai.security.revoked_token_used")
    assert (event.org_id, event.request_id, event.session_id) == (tenants.org_a, "req-revoked", None)
    assert event.actor_user_id is not None
    assert set(event.detail) == {"tokenId"}


def test_another_organizations_session_looks_absent_and_the_probe_is_recorded(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as a1, client(server, tenants.a2) as a2, client(server, tenants.b1) as b1:
        sid = create_session(a1)
        assert_error(b1.get(f"{API}/sessions/{sid}", headers={"X-Request-ID": "probe-1"}), 404, "session_not_found")
        r = b1.post(f"{API}/sessions/{sid}/messages", json={"content": "hi"}, headers={"X-Request-ID": "probe-2"})
        assert_error(r, 404, "session_not_found")  # the turn route (plain ASGI) too
        # Not recorded: a session of the caller's own organization (another user's), or none at all.
        assert_error(a2.get(f"{API}/sessions/{sid}"), 404, "session_not_found")
        assert_error(b1.get(f"{API}/sessions/{'0' * 36}"), 404, "session_not_found")
    probes = events(tenants, action="ai.security.cross_tenant_access")
    assert [(e.request_id, e.org_id, e.session_id) for e in probes] == [
        ("probe-1", tenants.org_b, sid),
        ("probe-2", tenants.org_b, sid),
    ]


def test_rate_limit_and_budget_refusals_are_recorded_apart_from_the_refused_message(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        assert c.put(f"{API}/budget", json={"messagesPerMinutePerUser": 1}).is_success
        assert send(c, sid).types[-1] == "done"
        refused = c.post(f"{API}/sessions/{sid}/messages", json={"content": "again"}, headers={"X-Request-ID": "rl"})
        assert (refused.status_code, refused.json()["code"]) == (429, "rate_limited")
        assert c.put(f"{API}/budget", json={"messagesPerMinutePerUser": None, "dailyBudgetCents": 0}).is_success
        broke = c.post(f"{API}/sessions/{sid}/messages", json={"content": "more"}, headers={"X-Request-ID": "bd"})
        assert broke.status_code == 402
    assert count(tenants, AiMessage) == 2  # the first message and its reply only
    assert [(e.action, e.request_id, e.session_id, e.detail) for e in events(tenants) if "security" in e.action] == [
        ("ai.security.rate_limited", "rl", sid, {"code": "rate_limited"}),
        ("ai.security.budget_refused", "bd", sid, {"code": broke.json()["code"]}),
    ]
    assert len(events(tenants, action="ai.message.send")) == 1


# --- tool calls and decisions --------------------------------------------------------------------------


def test_tool_calls_and_decisions_are_audited(tools: Tools) -> None:
    tools.provider.enqueue(
        tool_call("t__record", {"note": "milk"}), quoting_the_result, tool_call("t__format_disk", {}), Reply()
    )
    with client(tools.start(), tools.tenants.a1) as c:
        sid = create_session(c)
        first = send(c, sid, "Remember milk")
        asked = pending_call(first)
        with c.stream(
            "POST",
            f"{API}/sessions/{sid}/approve/{asked['executionId']}",
            json={"approved": True},
            headers={"X-Request-ID": "req-approve"},
        ) as r:
            r.read()
        assert tools.ran() == ["milk"]
        send(c, sid, "clean up")
    rows = events(tools.tenants)
    tool_rows = [(e.action, e.detail["status"], e.request_id) for e in rows if e.action.startswith("ai.tool.")]
    assert tool_rows == [
        ("ai.tool.t__record", "pending", rows[1].request_id),  # stored with the round that asked
        ("ai.tool.t__record", "completed", "req-approve"),  # run by the decision's continuation
        ("ai.tool.t__format_disk", "refused", tool_rows[2][2]),
    ]
    (decision,) = [e for e in rows if e.action == "ai.tool_approval.update"]
    assert decision.request_id == "req-approve"
    assert decision.detail == {
        "executionId": asked["executionId"],
        "toolName": "t__record",
        "approved": True,
        "always": False,
    }
    assert all(e.session_id == sid and e.org_id == tools.tenants.org_a for e in rows[1:])
