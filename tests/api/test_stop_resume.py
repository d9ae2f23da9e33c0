"""Stop (interrupt), close mid-stream, and resuming a turn's stream with Last-Event-ID."""

from __future__ import annotations

from tests.api.conftest import (
    API,
    assert_error,
    create_session,
    detail,
    insert_history,
    open_events,
    open_turn,
    send,
    session_row,
    wait_until,
)
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider

TOKENS = [f"w{i} " for i in range(20)]
SLOW = Reply(tokens=TOKENS, delay=0.03)
FULL = "".join(TOKENS)


# --- Stop --------------------------------------------------------------------------------------------


def test_stop_mid_reply_ends_with_done_and_keeps_the_partial_text(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW, Reply(tokens=["Next."]))
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c)
        with open_turn(c, sid, "tell me a story") as turn:
            turn.deltas(3)
            r = other.post(f"{API}/sessions/{sid}/interrupt")
            assert r.status_code == 200
            assert r.json() == {"success": True, "interrupted": True}
            turn.rest()
        assert turn.types[:2] == ["title_updated", "message_start"]
        assert set(turn.types[2:-1]) == {"content_delta"}
        assert turn.types[-1] == "done"
        assert "message_end" not in turn.types
        assert "error" not in turn.types
        assert 3 <= len(turn.types[2:-1]) < len(TOKENS)
        assert provider.closed == 1  # the provider stream was closed, not left running
        body = detail(c, sid)
        assert body["session"]["turnCount"] == 1
        reply = body["messages"][1]
        assert (reply["role"], reply["content"], reply["finishReason"]) == ("assistant", turn.text, "interrupted")
        # Nothing is running any more, and the next message works at once.
        assert_error(other.post(f"{API}/sessions/{sid}/interrupt"), 409, "no_turn_running")
        after = send(c, sid, "go on")
    assert after.types == ["message_start", "content_delta", "message_end", "done"]
    assert [m.plain_text for m in provider.calls[1][1:]] == ["tell me a story", turn.text, "go on"]


def test_interrupt_without_a_running_turn_is_409(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        assert_error(c.post(f"{API}/sessions/{sid}/interrupt"), 409, "no_turn_running")
        send(c, sid, "hello")
        assert_error(c.post(f"{API}/sessions/{sid}/interrupt"), 409, "no_turn_running")
        assert detail(c, sid)["session"]["turnCount"] == 1


def test_interrupt_before_the_first_token(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(first_delay=10))
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c)
        with open_turn(c, sid, "hello") as turn:
            turn.until(lambda f: f.event == "message_start")
            assert other.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            turn.rest()
        body = detail(c, sid)
    assert turn.types == ["title_updated", "message_start", "done"]
    assert provider.closed == 1
    # The reply is stored empty and interrupted: the conversation alternates.
    assert [(m["role"], m["content"], m["finishReason"]) for m in body["messages"]] == [
        ("user", "hello", None),
        ("assistant", "", "interrupted"),
    ]
    assert body["session"]["turnCount"] == 1


def test_close_mid_stream_ends_the_stream_and_the_session(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW)
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c)
        with open_turn(c, sid, "hello") as turn:
            turn.deltas(2)
            assert other.delete(f"{API}/sessions/{sid}").json() == {"success": True}
            turn.rest()
        assert turn.ended
        assert "done" not in turn.types
        assert "message_end" not in turn.types
        assert provider.closed == 1
        body = detail(c, sid)
        assert body["session"]["status"] == "closed"
        assert body["session"]["turnCount"] == 1
        stored = body["messages"][-1]
        assert stored["role"] == "assistant"
        assert FULL.startswith(stored["content"])
        assert stored["finishReason"] == "interrupted"
        r = c.post(f"{API}/sessions/{sid}/messages", json={"content": "again"})
        assert_error(r, 409, "session_closed")


# --- resume --------------------------------------------------------------------------------------------


def test_resume_mid_turn_replays_after_the_last_id_and_continues(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW)
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1_read_only) as reader:
        sid = create_session(c)
        with open_turn(c, sid, "hello") as turn:
            turn.until(lambda f: f.id == "1-4")
            with open_events(reader, sid, last_event_id="1-4") as resumed:
                resumed.rest()
            turn.rest()
    n = len(turn.frames)
    assert turn.types[-2:] == ["message_end", "done"]
    assert [f.id for f in turn.frames] == [f"1-{i}" for i in range(1, n + 1)]
    assert [f.id for f in resumed.frames] == [f"1-{i}" for i in range(5, n + 1)]
    assert [(f.event, f.data) for f in resumed.frames] == [(f.event, f.data) for f in turn.frames[4:]]


def test_resume_without_an_id_replays_the_whole_running_turn(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW)
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c)
        with open_turn(c, sid, "hello") as turn:
            turn.deltas(2)
            with open_events(other, sid) as resumed:
                resumed.rest()
            turn.rest()
    assert [f.id for f in resumed.frames] == [f.id for f in turn.frames]
    assert resumed.text == FULL


def test_resume_after_the_turn_ended(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=["a", "b", "c"]), Reply(tokens=["x", "y"]))
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        first = send(c, sid, "one")
        assert [f.id for f in first.frames][-1] == "1-7"
        # A client that lost the connection after 1.3 gets the rest, up to done.
        with open_events(c, sid, last_event_id="1-3") as rest:
            rest.rest()
        assert [f.id for f in rest.frames] == ["1-4", "1-5", "1-6", "1-7"]
        assert rest.types == ["content_delta", "content_delta", "message_end", "done"]
        # It saw everything: nothing to resume.
        r = c.get(f"{API}/sessions/{sid}/events", headers={"Last-Event-ID": "1-7"})
        assert_error(r, 409, "no_turn_running")
        # An id from an older turn: the newest turn is replayed whole.
        send(c, sid, "two")
        with open_events(c, sid, last_event_id="1-5") as newest:
            newest.rest()
        assert [f.id for f in newest.frames] == ["2-1", "2-2", "2-3", "2-4", "2-5"]


def test_resume_without_any_turn_is_409(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        assert_error(c.get(f"{API}/sessions/{sid}/events"), 409, "no_turn_running")
        assert_error(c.get(f"{API}/sessions/{sid}/events", headers={"Last-Event-ID": "1-1"}), 409, "no_turn_running")


def test_resumed_stream_sees_stop_and_done(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW)
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c)
        with open_turn(c, sid, "hello") as turn:
            turn.deltas(1)
        # The original client left; a second one re-attaches and then stops the turn.
        with open_events(other, sid, last_event_id=turn.frames[-1].id) as resumed:
            resumed.deltas(2)
            assert other.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            resumed.rest()
        assert resumed.types[-1] == "done"
        assert "message_end" not in resumed.types
        stored = wait_until(lambda: detail(c, sid)["messages"][1:], timeout=3)
    assert stored[0]["finishReason"] == "interrupted"
    assert stored[0]["content"] == turn.text + resumed.text


def test_stop_right_after_sending_stops_the_turn(make_server: ServerFactory, tenants: Tenants) -> None:
    """Stop pressed at once, while the turn still loads a long history: the model must not run on.

    Where the Stop lands (history loading, or the reply streaming) depends on timing; the long
    history makes the early case likely. Either way the reply must stop.
    """
    provider = ScriptedProvider(Reply(tokens=TOKENS, first_delay=0.2, delay=0.02))
    server = make_server(provider)
    with client(server, tenants.a1) as c, client(server, tenants.a1) as other:
        sid = create_session(c, title="long conversation")
        insert_history(tenants, sid, 3_000)
        with open_turn(c, sid, "one more question") as turn:
            r = other.post(f"{API}/sessions/{sid}/interrupt")
            turn.rest()
            assert r.status_code == 200, (r.text, turn.types, [f.data for f in turn.frames if f.event == "error"])
    assert turn.types[-1] == "done"
    assert "message_end" not in turn.types
    assert "error" not in turn.types
    assert turn.text != FULL
    assert session_row(tenants, sid).lease_token is None
