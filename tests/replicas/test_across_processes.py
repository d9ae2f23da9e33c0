"""A turn on one process, seen, stopped and closed from another; Redis down or restarted."""

from __future__ import annotations

import time

import pytest

from tests.api.conftest import (
    API,
    assert_error,
    create_session,
    detail,
    open_events,
    open_turn,
    session_row,
    wait_until,
)
from tests.conftest import ServerFactory, Tenants, client
from tests.replicas.conftest import Pair, long_reply
from tests.support.redis import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream


def test_a_turn_on_a_is_followed_from_b_with_and_without_an_id(relayed: Pair, upstream: ScriptedUpstream) -> None:
    upstream.enqueue(long_reply(40, 0.03))
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "tell me") as turn:
            turn.deltas(5)
            seen = turn.frames[-1].id
            with open_events(on_b, sid) as whole, open_events(on_b, sid, last_event_id=seen) as rest:
                whole.rest()
                rest.rest()
            turn.rest()
    ids = [f.id for f in turn.frames]
    assert [f.id for f in whole.frames] == ids  # the whole turn, from its start
    assert [f.id for f in rest.frames] == ids[ids.index(seen) + 1 :]  # no duplicate, no gap
    assert whole.types[-1] == rest.types[-1] == "done"
    assert whole.text == turn.text == "".join(f"w{i} " for i in range(40))


def test_stop_on_b_stops_the_turn_on_a_and_keeps_the_partial_reply(relayed: Pair, upstream: ScriptedUpstream) -> None:
    upstream.enqueue(long_reply(200, 0.02))
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "long story") as turn:
            turn.deltas(10)
            assert on_b.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            stopped = time.monotonic()
            assert upstream.wait_closed(timeout=1.0), "the model server was not told to stop within a second"
            assert time.monotonic() - stopped < 1.0
            turn.rest()
        reply = detail(on_b, sid)["messages"][-1]
    assert turn.types[-1] == "done"
    assert "error" not in turn.types
    assert reply["finishReason"] == "interrupted"
    assert reply["content"] == turn.text
    assert reply["content"].startswith("w0 w1 ")


def test_stop_on_b_still_works_when_a_lost_its_redis_control_connection(
    relayed: Pair, upstream: ScriptedUpstream, redis_server: RedisServer
) -> None:
    upstream.enqueue(long_reply(200, 0.02))
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "long story") as turn:
            turn.deltas(5)
            assert redis_server.client_kill("pubsub") >= 1  # nobody hears the control message now
            assert on_b.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            assert upstream.wait_closed(timeout=1.5), "the database flag was not honoured in time"
            turn.rest()
        reply = detail(on_a, sid)["messages"][-1]
    assert turn.types[-1] == "done"
    assert reply["finishReason"] == "interrupted"


def test_delete_on_b_ends_the_turn_on_a_and_nothing_more_is_stored(relayed: Pair, upstream: ScriptedUpstream) -> None:
    upstream.enqueue(long_reply(200, 0.02))
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "long story") as turn:
            turn.deltas(5)
            assert on_b.delete(f"{API}/sessions/{sid}").status_code == 200
            assert upstream.wait_closed(timeout=1.5)
            turn.rest()
        body = detail(on_b, sid)
    assert "done" not in turn.types  # a closed session's stream ends without done
    assert body["session"]["status"] == "closed"
    assert len(body["messages"][-1]["content"]) < len("".join(f"w{i} " for i in range(200)))


def test_turns_alternating_between_processes_number_their_events_upward(
    relayed: Pair, upstream: ScriptedUpstream
) -> None:
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        ids: list[str] = []
        for c in (on_a, on_b, on_a, on_b):
            with open_turn(c, sid, "next") as turn:
                turn.rest()
            assert turn.types[-1] == "done"
            ids += [f.id for f in turn.frames]
        # A re-attach on A after the third turn replays the fourth (B's), never an older one.
        with open_events(on_a, sid, last_event_id=ids[-2]) as last:
            last.rest()
    pairs = [tuple(int(n) for n in i.split("-")) for i in ids]
    assert pairs == sorted(pairs)
    assert len(set(pairs)) == len(pairs)
    assert sorted({p[0] for p in pairs}) == [1, 2, 3, 4]  # one stream number per turn, whoever ran it
    assert [f.id for f in last.frames] == ids[-1:]


def test_a_redis_restart_mid_turn_loses_no_frame_for_a_follower(
    relayed: Pair, upstream: ScriptedUpstream, redis_server: RedisServer
) -> None:
    upstream.enqueue(long_reply(120, 0.025))
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "long story") as turn:
            turn.deltas(3)
            with open_events(on_b, sid) as follower:
                follower.deltas(10)
                redis_server.stop()  # every stream in Redis is lost
                redis_server.start()
                follower.rest()
            turn.rest()
    # The process that streams wrote the lost stream again from memory: the follower misses nothing.
    assert follower.types[-1] == "done"
    assert "stream_gap" not in follower.types
    assert follower.text == turn.text
    assert [f.id for f in follower.frames] == [f.id for f in turn.frames]


def test_without_redis_a_message_and_stop_work_and_a_re_attach_elsewhere_says_why_not(
    unrelayed: Pair, upstream: ScriptedUpstream
) -> None:
    upstream.enqueue(long_reply(200, 0.02))
    with client(unrelayed.a, unrelayed.tenants.a1) as on_a, client(unrelayed.b, unrelayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "long story") as turn:
            turn.deltas(5)
            assert_error(on_b.get(f"{API}/sessions/{sid}/events"), 503, "resume_unavailable")
            assert_error(
                on_b.post(f"{API}/sessions/{sid}/messages", json={"content": "again"}), 409, "turn_in_progress"
            )
            assert on_b.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            assert upstream.wait_closed(timeout=1.5)
            turn.rest()
        with open_turn(on_b, sid, "after the stop") as after:
            after.rest()
    assert turn.types[-1] == after.types[-1] == "done"


@pytest.mark.parametrize("redis", [True, False], ids=["redis", "no-redis"])
def test_a_session_busy_on_b_is_not_expired_by_a(
    make_server: ServerFactory, tenants: Tenants, upstream: ScriptedUpstream, redis_server: RedisServer, redis: bool
) -> None:
    """A's sweep judges by what is stored, not by what A remembers of the session."""
    env = {"MCP_LLM_BASE_URL": upstream.base_url, "PARLEY_SESSION_IDLE_TTL_SECONDS": "1.5"}
    if redis:
        env["PARLEY_REDIS_URL"] = redis_server.url
    make_server(**env, PARLEY_NODE_NAME="machine-a", PARLEY_SWEEP_INTERVAL_SECONDS="0.2")
    b = make_server(**env, PARLEY_NODE_NAME="machine-b", PARLEY_SWEEP_INTERVAL_SECONDS="3600")
    upstream.set_default(TokenStream(n=3))
    with client(b, tenants.a1) as on_b:
        sid = create_session(on_b)
        for _ in range(4):  # a message every 0.8 s on B for 3 s: never idle for 1.5 s
            with open_turn(on_b, sid, "still here") as turn:
                turn.rest()
            assert turn.types[-1] == "done"
            time.sleep(0.8)
        upstream.enqueue(long_reply(100, 0.03))  # and a turn of 3 s, longer than the idle limit
        with open_turn(on_b, sid, "a long one") as turn:
            turn.rest()
    assert turn.types[-1] == "done"
    assert session_row(tenants, sid).status == "active"
    assert wait_until(lambda: session_row(tenants, sid).status == "expired", timeout=5)  # idle now: expired by A


def test_with_redis_down_a_message_and_stop_still_work_and_a_re_attach_elsewhere_says_why_not(
    relayed: Pair, upstream: ScriptedUpstream, redis_server: RedisServer
) -> None:
    redis_server.kill()
    upstream.enqueue(long_reply(200, 0.02))
    with client(relayed.a, relayed.tenants.a1) as on_a, client(relayed.b, relayed.tenants.a1) as on_b:
        sid = create_session(on_a)
        with open_turn(on_a, sid, "long story") as turn:
            turn.deltas(5)
            relay = relayed.b.app.state.services.sessions.relay
            assert wait_until(lambda: not relay.available, timeout=5)  # B has noticed Redis is gone
            assert_error(on_b.get(f"{API}/sessions/{sid}/events"), 503, "resume_unavailable")
            assert on_b.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            assert upstream.wait_closed(timeout=1.5)
            turn.rest()
    assert turn.types[-1] == "done"
