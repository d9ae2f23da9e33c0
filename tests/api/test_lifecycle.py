"""Session lifecycle with a fake clock: idle and age expiry, the sweeper, the in-memory capacity."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.api.conftest import (
    API,
    FakeClock,
    assert_error,
    create_session,
    detail,
    open_turn,
    send,
    session_row,
    wait_until,
)
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider

IDLE_MESSAGE = "Session expired due to inactivity. Start a new session."
AGE_MESSAGE = "Session expired (24h limit). Start a new session."


def _status(c: Any, sid: str) -> str:
    status: str = detail(c, sid)["session"]["status"]
    return status


def test_idle_over_two_hours_is_410_and_the_row_becomes_expired(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    server = make_server(ScriptedProvider(), app_kwargs={"clock": clock})
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        clock.advance(hours=1, minutes=59)
        assert send(c, sid, "still here").types[-1] == "done"  # just under the limit
        clock.advance(hours=2, seconds=1)
        body = assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "late"}), 410, "session_expired")
        assert body["error"] == IDLE_MESSAGE
        assert _status(c, sid) == "expired"
        assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "again"}), 410, "session_expired")
        assert [m["content"] for m in detail(c, sid)["messages"]] == ["still here", "Hello there!"]
        expired = c.get(f"{API}/sessions", params={"status": "expired"}).json()["data"]
        assert [s["id"] for s in expired] == [sid]
    assert session_row(tenants, sid).lease_token is None


def test_age_over_24_hours_is_410_even_when_active(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    server = make_server(ScriptedProvider(), app_kwargs={"clock": clock})
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        for i in range(16):  # a message every 90 minutes: never idle, 24 h old at the end
            clock.advance(minutes=90)
            assert send(c, sid, f"message {i}").types[-1] == "done"
        clock.advance(minutes=1)
        body = assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "late"}), 410, "session_expired")
        assert body["error"] == AGE_MESSAGE
        assert _status(c, sid) == "expired"
        assert detail(c, sid)["session"]["turnCount"] == 16


def test_sweeper_writes_expired_for_idle_sessions(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    server = make_server(ScriptedProvider(), app_kwargs={"clock": clock}, PARLEY_SWEEP_INTERVAL_SECONDS="0.1")
    with client(server, tenants.a1) as c:
        never_used = create_session(c)
        live = create_session(c)
        send(c, live, "hello")
        clock.advance(hours=2, minutes=1)
        fresh = create_session(c)
        wait_until(lambda: _status(c, never_used) == "expired" and _status(c, live) == "expired", timeout=3)
        assert _status(c, fresh) == "active"
        assert session_row(tenants, live).status == "expired"
        assert_error(c.post(f"{API}/sessions/{live}/messages", json={"content": "late"}), 410, "session_expired")


def test_sweeper_ends_a_running_turn_past_24_hours(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=[f"x{i} " for i in range(100)], delay=0.03))
    server = make_server(provider, app_kwargs={"clock": clock}, PARLEY_SWEEP_INTERVAL_SECONDS="0.1")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with open_turn(c, sid, "long story") as turn:
            turn.deltas(2)
            clock.advance(hours=24, minutes=1)
            turn.rest()
        assert turn.types[-2:] == ["error", "done"]
        assert turn.frames[-2].data == {"type": "error", "code": "session_expired", "message": AGE_MESSAGE}
        assert "message_end" not in turn.types
        assert len(turn.types) < 100
        assert provider.closed == 1
        wait_until(lambda: _status(c, sid) == "expired", timeout=3)
        body = detail(c, sid)
    assert body["session"]["turnCount"] == 1
    assert body["messages"][-1]["content"] == turn.text
    assert body["messages"][-1]["finishReason"] == "interrupted"
    assert session_row(tenants, sid).lease_token is None


def test_sweeper_does_not_idle_expire_a_running_turn(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=[f"x{i} " for i in range(20)], delay=0.03))
    server = make_server(
        provider,
        app_kwargs={"clock": clock, "lease_ttl": timedelta(hours=5)},
        PARLEY_SWEEP_INTERVAL_SECONDS="0.1",
    )
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with open_turn(c, sid, "long story") as turn:
            turn.deltas(2)
            clock.advance(hours=3)  # the turn started 3 h "ago" but is streaming: not idle
            turn.rest()
        assert turn.types[-2:] == ["message_end", "done"]
        assert _status(c, sid) == "active"
        assert send(c, sid, "next").types[-1] == "done"


def test_capacity_drops_idle_sessions_from_memory_without_losing_anything(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    provider = ScriptedProvider()
    server = make_server(provider, PARLEY_MAX_LIVE_SESSIONS="2")
    with client(server, tenants.a1) as c:
        sids = [create_session(c) for _ in range(4)]
        for i, sid in enumerate(sids):
            provider.enqueue(Reply(tokens=[f"answer {i}"]))
            send(c, sid, f"question {i}")
        # The oldest were dropped from memory: nothing left there to resume ...
        assert_error(
            c.get(f"{API}/sessions/{sids[0]}/events", headers={"Last-Event-ID": "1.1"}), 409, "no_turn_running"
        )
        with c.stream("GET", f"{API}/sessions/{sids[3]}/events", headers={"Last-Event-ID": "1.1"}) as r:
            assert r.status_code == 200  # ... while the newest is still live
        # ... but their next message works with the whole history, and ids go on.
        provider.enqueue(Reply(tokens=["again 0"]))
        again = send(c, sids[0], "follow-up 0")
        assert again.types[-1] == "done"
        assert again.frames[0].id == "2-1"
        assert [m.plain_text for m in provider.calls[-1][1:]] == ["question 0", "answer 0", "follow-up 0"]
        statuses = {s["id"]: s["status"] for s in c.get(f"{API}/sessions").json()["data"]}
    assert statuses == dict.fromkeys(sids, "active")


def test_capacity_never_drops_a_session_with_a_running_turn(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    slow = Reply(tokens=[f"s{i} " for i in range(15)], delay=0.03)
    provider.enqueue(slow, slow)
    server = make_server(provider, PARLEY_MAX_LIVE_SESSIONS="2")
    with client(server, tenants.a1) as c:
        one, two, three = (create_session(c) for _ in range(3))
        with open_turn(c, one, "first") as t1, open_turn(c, two, "second") as t2:
            t1.deltas(1)
            t2.deltas(1)
            third = send(c, three, "third")
            t1.rest()
            t2.rest()
    assert third.types[-1] == "done"
    assert t1.types[-2:] == t2.types[-2:] == ["message_end", "done"]
    assert t1.text == t2.text == "".join(f"s{i} " for i in range(15))
