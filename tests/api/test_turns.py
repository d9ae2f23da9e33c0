"""Turns over HTTP with the scripted provider: events, ids, history, cost, limits, failures."""

from __future__ import annotations

from typing import Any

import pytest

from parley.chat.history import NO_RESULT
from parley.errors import ProviderError, ProviderErrorKind
from parley.providers.base import ReasoningPart, TextPart, ToolCallPart, ToolResultPart, Usage
from tests.api.conftest import (
    API,
    FakeClock,
    assert_error,
    create_session,
    detail,
    insert_message,
    open_turn,
    send,
    wait_until,
)
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider

SLOW = Reply(tokens=[f"t{i} " for i in range(20)], delay=0.02)
SLOW_TEXT = "".join(f"t{i} " for i in range(20))


def _usage(c: Any) -> dict[str, Any]:
    r = c.get(f"{API}/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# --- events --------------------------------------------------------------------------------------


def test_event_order_and_ids_of_first_and_second_turn(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=["Hel", "lo", " world"]), Reply(tokens=["Again"]))
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        first = send(c, sid, "What is DNS?")
        second = send(c, sid, "And DHCP?")
        messages = detail(c, sid)["messages"]
    assert first.status == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert first.headers["cache-control"] == "no-cache"
    assert first.types == [
        "title_updated", "message_start", "content_delta", "content_delta", "content_delta", "message_end", "done",
    ]  # fmt: skip
    assert [f.id for f in first.frames] == [f"1-{i}" for i in range(1, 8)]
    assert all(f.data["type"] == f.event for f in first.frames)
    assert first.frames[0].data == {"type": "title_updated", "title": "What is DNS?"}
    assert first.text == "Hello world"
    assert first.frames[-1].data == {"type": "done"}
    # Title only on the first message; the turn number goes on.
    assert second.types == ["message_start", "content_delta", "message_end", "done"]
    assert [f.id for f in second.frames] == ["2-1", "2-2", "2-3", "2-4"]
    # message_start names the id the reply is stored under.
    assert first.of("message_start")[0].data["messageId"] == messages[1]["id"]
    assert second.of("message_start")[0].data["messageId"] == messages[3]["id"]


def test_long_first_message_gives_a_short_title(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    content = "Please help me figure out why the nightly backup job on the file server fails\nDetails: …"
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        stream = send(c, sid, content)
        assert detail(c, sid)["session"]["title"] == "Please help me figure out why the nightly backup job on the…"
    assert stream.frames[0].data["title"] == "Please help me figure out why the nightly backup job on the…"


def test_history_holds_earlier_turns_without_reasoning(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(
        Reply(tokens=["Paris", "."], reasoning=["SECRET-THOUGHT about capitals"]),
        Reply(tokens=["About 2.1 million."]),
        Reply(tokens=["ok"]),
    )
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        first = send(c, sid, "Capital of France?")
        send(c, sid, "Population?")
        send(c, sid, "Thanks")
    assert first.of("reasoning_delta")[0].data["delta"] == "SECRET-THOUGHT about capitals"
    expected = [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "Population?"),
        ("assistant", "About 2.1 million."),
        ("user", "Thanks"),
    ]
    for turn, call in enumerate(provider.calls):
        assert call[0].role == "system"
        assert [(m.role, m.plain_text) for m in call[1:]] == expected[: 2 * turn + 1]
        for message in call:
            assert all(isinstance(p, TextPart) for p in message.parts)
            assert not any(isinstance(p, ReasoningPart) for p in message.parts)
            assert "SECRET-THOUGHT" not in message.plain_text


def test_history_order_does_not_depend_on_the_clock_moving(make_server: ServerFactory, tenants: Tenants) -> None:
    """Turns within one clock tick (coarse or stepped clocks) keep the conversation in order."""
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=["A1"]), Reply(tokens=["A2"]), Reply(tokens=["A3"]))
    server = make_server(provider, app_kwargs={"clock": FakeClock()})  # never advanced
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        for text in ("U1", "U2", "U3"):
            send(c, sid, text)
        stored = [m["content"] for m in detail(c, sid)["messages"]]
    assert [m.plain_text for m in provider.calls[2][1:]] == ["U1", "A1", "U2", "A2", "U3"]
    assert stored == ["U1", "A1", "U2", "A2", "U3", "A3"]


# --- cost ------------------------------------------------------------------------------------------


def test_message_end_cost_session_totals_and_usage_are_exact(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(
        Reply(tokens=["one"], usage=Usage(input_tokens=1000, output_tokens=500)),
        Reply(tokens=["two"], usage=Usage(input_tokens=1200, output_tokens=80, cache_read_tokens=800)),
    )
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        before = _usage(c)
        first = send(c, sid, "first")
        second = send(c, sid, "second")
        session = detail(c, sid)["session"]
        usage = _usage(c)
    assert before["daily"]["totalCostCents"] == "0"
    assert before["daily"]["messageCount"] == 0
    # 1000 * $3/M + 500 * $15/M = $0.0105
    assert first.of("message_end")[0].data == {
        "type": "message_end", "inputTokens": 1000, "outputTokens": 500, "cacheReadTokens": 0,
        "cacheWriteTokens": 0, "costUsd": "0.0105", "usageEstimated": False,
    }  # fmt: skip
    # (1200 + 800 cached, billed as input) * $3/M + 80 * $15/M = $0.0072
    end = second.of("message_end")[0].data
    assert (end["inputTokens"], end["outputTokens"], end["cacheReadTokens"]) == (2000, 80, 800)
    assert end["costUsd"] == "0.0072"
    assert session["turnCount"] == 2
    assert session["totalCostCents"] == "1.77"
    assert (session["totalInputTokens"], session["totalOutputTokens"], session["totalCacheReadTokens"]) == (
        2200,
        580,
        800,
    )
    for period in ("daily", "monthly"):
        assert usage[period] == {
            "inputTokens": 2200, "outputTokens": 580, "cacheReadTokens": 800, "cacheWriteTokens": 0,
            "totalCostCents": "1.77", "messageCount": 2,
        }  # fmt: skip
    assert usage["budget"] is None


def test_round_costs_are_plain_decimal_strings(make_server: ServerFactory, tenants: Tenants) -> None:
    """Money on the wire is a plain decimal ("300"), never exponent notation ("3E+2")."""
    provider = ScriptedProvider()
    provider.enqueue(
        Reply(tokens=["a"], usage=Usage(input_tokens=1_000_000, output_tokens=0)),  # $3 = 300 cents
        Reply(tokens=["b"], usage=Usage(input_tokens=10_000_000, output_tokens=0)),  # $30, total $33
    )
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        first = send(c, sid, "one")
        assert first.of("message_end")[0].data["costUsd"] == "3"
        assert detail(c, sid)["session"]["totalCostCents"] == "300"
        assert detail(c, sid)["messages"][1]["costCents"] == "300"
        assert _usage(c)["daily"]["totalCostCents"] == "300"
        second = send(c, sid, "two")
        assert second.of("message_end")[0].data["costUsd"] == "30"
        assert detail(c, sid)["session"]["totalCostCents"] == "3300"
        assert _usage(c)["monthly"]["totalCostCents"] == "3300"


# --- one turn at a time, limits ----------------------------------------------------------------------


def test_second_send_while_a_turn_runs_is_409(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW)
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with open_turn(c, sid, "first") as turn:
            turn.deltas(1)
            assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "second"}), 409, "turn_in_progress")
            turn.rest()
        assert turn.types[-2:] == ["message_end", "done"]
        assert [m["content"] for m in detail(c, sid)["messages"]] == ["first", SLOW_TEXT]
        assert send(c, sid, "third").types[-1] == "done"
    assert len(provider.calls) == 2


def test_a_turn_on_one_server_blocks_a_send_on_another(make_server: ServerFactory, tenants: Tenants) -> None:
    first_provider, second_provider = ScriptedProvider(), ScriptedProvider()
    first_provider.enqueue(SLOW)
    one = make_server(first_provider)
    two = make_server(second_provider)  # same data directory, same SQLite file
    with client(one, tenants.a1) as c1, client(two, tenants.a1) as c2:
        sid = create_session(c1)
        with open_turn(c1, sid, "on server one") as turn:
            turn.deltas(2)
            r = c2.post(f"{API}/sessions/{sid}/messages", json={"content": "on server two"})
            assert_error(r, 409, "turn_in_progress")
            turn.rest()
        assert turn.types[-1] == "done"
        assert send(c2, sid, "now server two").types[-1] == "done"
    assert [(m.role, m.plain_text) for m in second_provider.calls[0][1:]] == [
        ("user", "on server one"),
        ("assistant", SLOW_TEXT),
        ("user", "now server two"),
    ]


def test_max_turns_reached_is_409(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider(), PARLEY_MAX_TURNS="1")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        assert send(c, sid, "one").types[-1] == "done"
        body = assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "two"}), 409, "max_turns_reached")
        assert "1 turns" in body["error"]
        session = detail(c, sid)
    assert session["session"]["maxTurns"] == 1
    assert session["session"]["turnCount"] == 1
    assert [m["content"] for m in session["messages"]] == ["one", "Hello there!"]


# --- failures ---------------------------------------------------------------------------------------


def test_a_stored_reply_with_tool_calls_is_replayed_to_a_server_without_tools(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    """Tool rounds stay in the history when no tool server is configured (any more): the model
    gets every call with a result (an error for one that has none), and the turn goes on."""
    provider = ScriptedProvider()
    server = make_server(provider)
    parts = [
        {"type": "text", "text": "Rebooting."},
        {"type": "tool_call", "toolUseId": "c1", "toolName": "ops__reboot", "input": {"host": "db1"}},
    ]
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        send(c, sid, "before")
        insert_message(tenants, sid, role="assistant", parts=parts)
        after = send(c, sid, "after")
        body = detail(c, sid)
    assert after.types[-1] == "done"
    assert "error" not in after.types
    sent = provider.calls[1]
    # The inserted reply has no place of its own in the session (position 0): it comes first.
    assert [m.role for m in sent] == ["system", "assistant", "tool", "user", "assistant", "user"]
    assert sent[1].parts == (
        TextPart(text="Rebooting."),
        ToolCallPart(call_id="c1", name="ops__reboot", arguments={"host": "db1"}),
    )
    assert sent[2].parts == (ToolResultPart(call_id="c1", output=NO_RESULT, is_error=True),)
    assert body["session"]["turnCount"] == 2


def test_provider_error_mid_reply_keeps_the_partial_text(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(
        Reply(tokens=["Par", "tial", " never"], fail_after=2, error=ProviderError(ProviderErrorKind.STREAM)),
        Reply(tokens=["Recovered"]),
    )
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        failed = send(c, sid, "hello")
        body = detail(c, sid)
        ok = send(c, sid, "retry")
    assert failed.types == ["title_updated", "message_start", "content_delta", "content_delta", "error", "done"]
    assert failed.of("error")[0].data == {
        "type": "error",
        "code": "upstream_stream",
        "message": "The connection to the model server broke mid-reply.",
    }
    assert body["session"]["turnCount"] == 1
    reply = body["messages"][1]
    assert (reply["role"], reply["content"], reply["finishReason"]) == ("assistant", "Partial", "upstream_stream")
    assert ok.types[-2:] == ["message_end", "done"]
    assert [m.plain_text for m in provider.calls[1][1:]] == ["hello", "Partial", "retry"]


@pytest.mark.parametrize(
    "kind",
    [ProviderErrorKind.AUTH, ProviderErrorKind.UNAVAILABLE, ProviderErrorKind.CONTEXT_LENGTH],
)
def test_provider_error_before_any_token(make_server: ServerFactory, tenants: Tenants, kind: ProviderErrorKind) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=[], usage=None, error=ProviderError(kind)))
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        failed = send(c, sid, "hello")
        body = detail(c, sid)
        usage = _usage(c)
    assert failed.types == ["title_updated", "message_start", "error", "done"]
    assert failed.of("error")[0].data["code"] == kind.value
    assert failed.of("error")[0].data["message"] == ProviderError(kind).message
    assert body["session"]["turnCount"] == 1
    # The reply is stored empty with the error as its finish reason: the conversation alternates.
    assert [(m["role"], m["content"], m["finishReason"]) for m in body["messages"]] == [
        ("user", "hello", None),
        ("assistant", "", kind.value),
    ]
    assert usage["daily"]["messageCount"] == 0
    assert usage["daily"]["totalCostCents"] == "0"


def test_turn_timeout_publishes_error_then_done(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(first_delay=5), Reply(tokens=["a", "b", "c", "d", "e"], delay=0.2))
    server = make_server(provider, PARLEY_TURN_TIMEOUT_SECONDS="0.3")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        silent = send(c, sid, "slow to start")
        partial = send(c, sid, "slow tokens")
        body = detail(c, sid)
    assert silent.types == ["title_updated", "message_start", "error", "done"]
    assert silent.of("error")[0].data == {
        "type": "error",
        "code": "turn_timeout",
        "message": "The model took longer than 0.3 seconds. Please try again.",
    }
    assert partial.types[0] == "message_start"
    assert partial.types[-2:] == ["error", "done"]
    assert "message_end" not in partial.types
    assert partial.of("error")[0].data["code"] == "turn_timeout"
    assert 1 <= len(partial.of("content_delta")) < 5
    assert provider.closed == 2
    assert body["session"]["turnCount"] == 2
    last = body["messages"][-1]
    assert (last["role"], last["content"], last["finishReason"]) == ("assistant", partial.text, "turn_timeout")


# --- the connection ---------------------------------------------------------------------------------


def test_heartbeats_arrive_while_the_model_is_silent(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(first_delay=0.9))
    server = make_server(provider, PARLEY_HEARTBEAT_SECONDS="0.2")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        stream = send(c, sid, "hello")
    assert stream.comments >= 3
    assert stream.types[-2:] == ["message_end", "done"]


def test_a_client_that_leaves_does_not_stop_the_turn(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    provider.enqueue(SLOW)
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with open_turn(c, sid, "hello") as turn:
            turn.deltas(2)
        # The response is closed; the turn goes on and is stored whole.
        done = wait_until(lambda: detail(c, sid)["session"]["turnCount"] == 1, timeout=5)
        assert done
        body = detail(c, sid)
    reply = body["messages"][1]
    assert (reply["content"], reply["finishReason"]) == (SLOW_TEXT, "stop")
    assert body["session"]["totalOutputTokens"] == 3


def test_a_lease_lost_under_a_live_turn_still_refuses_a_second_turn(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    """If the database lease of a running turn expired (say renewals failed), the process still
    knows the turn is live: a second message is refused and the first turn is left intact."""
    import sqlalchemy as sa

    from parley.store.models import AiSession
    from tests.api.conftest import _in_db

    provider = ScriptedProvider(Reply(tokens=[f"t{i} " for i in range(30)], delay=0.03))
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with open_turn(c, sid, "first") as first:
            first.deltas(3)

            async def expire(s: Any) -> None:  # the database now says no turn holds the session
                await s.execute(
                    sa.update(AiSession).where(AiSession.id == sid).values(lease_token=None, lease_expires_at=None)
                )

            _in_db(tenants, expire)
            refused = c.post(f"{API}/sessions/{sid}/messages", json={"content": "second"})
            assert_error(refused, 409, "turn_in_progress")
            rest = [f.event for f in first.rest()]
        assert rest[-2:] == ["message_end", "done"]
        assert first.text == "".join(f"t{i} " for i in range(30))
        assert send(c, sid, "third").types[-1] == "done"
        contents = [m["content"] for m in detail(c, sid)["messages"]]
        reply = "".join(f"t{i} " for i in range(30))
        assert contents == ["first", reply, "third", reply]
        assert len(provider.calls) == 2  # the refused message never reached the model
