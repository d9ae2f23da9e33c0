"""Budgets and rate limits through the API: 403/402/429 as a client reads them, reservations that
hold under parallel turns, metered streams, exact cents."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx2
import pytest

from parley.chat.turns import CUT_CHARS_PER_TOKEN
from parley.providers.base import Usage
from tests.api.conftest import API, FakeClock, assert_error, create_session, detail, send
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider

# base_env prices: $3 input, $15 output per million tokens -> 0.0003 / 0.0015 cents per token.


def put_budget(c: httpx2.Client, **fields: Any) -> dict[str, Any]:
    r = c.put(f"{API}/budget", json=fields)
    assert r.status_code == 200, r.text
    budget: dict[str, Any] = r.json()["budget"]
    return budget


def usage(c: httpx2.Client) -> dict[str, Any]:
    r = c.get(f"{API}/usage")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_budget_is_set_partially_and_shown_with_usage(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        assert usage(c)["budget"] is None  # no row: unlimited
        budget = put_budget(c, dailyBudgetCents=100, messagesPerMinutePerUser=20)
        assert budget["dailyBudgetCents"] == "100"
        assert budget["monthlyBudgetCents"] is None
        assert budget["messagesPerMinutePerUser"] == 20
        budget = put_budget(c, monthlyBudgetCents=250.5)
        assert (budget["dailyBudgetCents"], budget["monthlyBudgetCents"]) == ("100", "250.5")
        sid = create_session(c)
        assert send(c, sid).types[-1] == "done"
        view = usage(c)
        # ScriptedProvider reports 10 input and 3 output tokens: 10*3 + 3*15 = 75 per million USD.
        assert view["daily"]["totalCostCents"] == "0.0075"
        assert view["budget"]["dailyUsedCents"] == "0.0075"
        assert view["budget"]["dailyRemainingCents"] == "99.9925"
        assert view["budget"]["reservedCents"] == "0"  # settled when the turn ended
        assert view["budget"]["dailyResetsAt"].endswith("T00:00:00Z")
        budget = put_budget(c, dailyBudgetCents=None)
        assert budget["dailyBudgetCents"] is None
        assert budget["dailyRemainingCents"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"dailyBudgetCents": -1},
        {"maxTurnsPerSession": 0},
        {"messagesPerMinutePerUser": -5},
        {"allowedModels": []},
        {"unknownField": 1},
        {"dailyBudgetCents": "abc"},
    ],
)
def test_bad_budget_bodies_are_422(make_server: ServerFactory, tenants: Tenants, body: dict[str, Any]) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        assert_error(c.put(f"{API}/budget", json=body), 422, "validation_error")
        assert usage(c)["budget"] is None


def test_budget_permissions(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1_read_only) as ro:
        assert_error(ro.put(f"{API}/budget", json={"dailyBudgetCents": 1}), 403, "forbidden")
    with client(server, tenants.a1) as c:
        r = c.put(f"{API}/budget", params={"orgId": tenants.org_b}, json={"dailyBudgetCents": 1})
        assert_error(r, 403, "forbidden")
    with client(server, tenants.system) as system:
        r = system.put(f"{API}/budget", params={"orgId": tenants.org_b}, json={"dailyBudgetCents": 7})
        assert r.status_code == 200
    with client(server, tenants.b1) as b:
        assert usage(b)["budget"]["dailyBudgetCents"] == "7"


def test_disabled_organization_gets_403_and_nothing_is_stored(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        put_budget(c, enabled=False)
        r = c.post(f"{API}/sessions/{sid}/messages", json={"content": "hi"})
        assert_error(r, 403, "ai_disabled")
        assert detail(c, sid)["messages"] == []
        assert provider.calls == []
        put_budget(c, enabled=True)
        assert send(c, sid).types[-1] == "done"


def test_spent_budget_gives_402_with_reset_time(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        assert send(c, sid).types[-1] == "done"
        put_budget(c, dailyBudgetCents=0.0075)  # exactly what the first turn cost
        r = c.post(f"{API}/sessions/{sid}/messages", json={"content": "more"})
        assert r.status_code == 402
        body = r.json()
        assert body["code"] == "daily_budget_exhausted"
        assert body["resetsAt"].endswith("T00:00:00Z")
        assert body["resetsAt"] in body["error"].replace("+00:00", "Z")
        assert len(provider.calls) == 1  # the model was not called
        assert [m["role"] for m in detail(c, sid)["messages"]] == ["user", "assistant"]


def test_zero_budget_means_none(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider())
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        put_budget(c, monthlyBudgetCents=0)
        assert c.post(f"{API}/sessions/{sid}/messages", json={"content": "hi"}).json()["code"] == (
            "monthly_budget_exhausted"
        )


def test_max_tokens_is_lowered_to_what_the_budget_can_pay(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    server = make_server(provider, MCP_LLM_MAX_TOKENS="4096")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        put_budget(c, dailyBudgetCents=0.5)
        assert send(c, sid).types[-1] == "done"
        (max_tokens,) = provider.max_tokens
        # 0.5 cents minus the worst-case input (the prompt's bytes), at 0.0015 cents per output token.
        assert 200 < max_tokens < 333


def test_a_conversation_too_long_for_the_budget_is_refused_before_the_model(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    provider = ScriptedProvider()
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        put_budget(c, dailyBudgetCents=0.5)
        r = c.post(f"{API}/sessions/{sid}/messages", json={"content": "x" * 9000})  # 2.7 cents of input, at most
        assert r.status_code == 402
        assert r.json()["code"] == "budget_insufficient"
        assert provider.calls == []
        assert detail(c, sid)["messages"] == []


@pytest.mark.parametrize(
    ("per_read", "width"),
    [
        (1, 5),
        (64, 5),  # the cut falls inside one read's tokens
        (1, 40),  # pieces of 40 characters: cut by their text, billed no more than the reservation
    ],
)
def test_a_server_that_ignores_max_tokens_is_cut_off_at_the_reservation(
    make_server: ServerFactory, tenants: Tenants, per_read: int, width: int
) -> None:
    tokens = [f"w{i:03d} ".rjust(width, "x") for i in range(400)]
    reply = Reply(tokens=tokens, usage=Usage(input_tokens=50, output_tokens=400), per_read=per_read)
    provider = ScriptedProvider(reply)
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        put_budget(c, dailyBudgetCents=0.3)
        stream = send(c, sid)
        (max_tokens,) = provider.max_tokens
        assert max_tokens is not None
        assert max_tokens < 200
        assert stream.types[-2:] == ["error", "done"]
        assert stream.of("error")[0].data["code"] == "budget_exhausted"
        kept = "".join(frame.data["delta"] for frame in stream.of("content_delta"))
        assert kept == "".join(tokens)[: min(max_tokens * width, max_tokens * CUT_CHARS_PER_TOKEN)]
        assert provider.closed == 1  # the upstream stream was closed
        (_, assistant) = detail(c, sid)["messages"]
        assert assistant["finishReason"] == "budget_exhausted"
        assert assistant["content"] == kept
        assert assistant["outputTokens"] <= max_tokens
        view = usage(c)["budget"]
        assert Decimal(view["dailyUsedCents"]) <= Decimal("0.3")
        assert Decimal(view["dailyUsedCents"]) > 0  # the partial reply is billed


def test_fifty_parallel_turns_never_spend_past_the_budget(make_server: ServerFactory, tenants: Tenants) -> None:
    # Each reply ignores max_tokens and reports 300 output tokens: 0.45 cents if it were not metered.
    reply = Reply(
        tokens=[f"t{i} " for i in range(300)], first_delay=0.3, usage=Usage(input_tokens=40, output_tokens=300)
    )
    server = make_server(ScriptedProvider(reply), PARLEY_DB_POOL_SIZE="60")
    budget = Decimal(2)
    with client(server, tenants.a1) as c:
        put_budget(c, dailyBudgetCents=int(budget))
        sessions = [create_session(c) for _ in range(50)]

    def turn(sid: str) -> tuple[int, str]:
        with client(server, tenants.a1, timeout=60) as own:
            stream = send(own, sid)
            if stream.status != 200:
                return stream.status, stream.body["code"]
            return 200, stream.types[-2]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(turn, sessions))
    statuses = [status for status, _ in results]
    assert statuses.count(402) > 0, results  # the budget ran out for some
    assert statuses.count(200) > 0, results
    assert set(statuses) <= {200, 402}, results
    with client(server, tenants.a1) as c:
        view = usage(c)
        spent = Decimal(view["budget"]["dailyUsedCents"])
        assert spent <= budget, (spent, results)
        assert view["budget"]["reservedCents"] == "0"
        stored = sum(
            Decimal(s["totalCostCents"]) for s in c.get(f"{API}/sessions", params={"limit": 50}).json()["data"]
        )
        assert stored == spent


def test_reservations_hold_across_two_server_processes(make_server: ServerFactory, tenants: Tenants) -> None:
    """Two parley processes on one database: the database, not memory, serializes admissions."""
    reply = Reply(
        tokens=[f"t{i} " for i in range(300)], first_delay=0.3, usage=Usage(input_tokens=40, output_tokens=300)
    )
    first = make_server(ScriptedProvider(reply))
    second = make_server(ScriptedProvider(reply))
    budget = Decimal(1)
    with client(first, tenants.a1) as c:
        put_budget(c, dailyBudgetCents=int(budget))
        sessions = [create_session(c) for _ in range(16)]

    def turn(job: tuple[int, str]) -> int:
        index, sid = job
        with client(first if index % 2 else second, tenants.a1, timeout=60) as own:
            return int(send(own, sid).status)

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(turn, enumerate(sessions)))
    assert statuses.count(402) > 0, statuses
    with client(second, tenants.a1) as c:
        assert Decimal(usage(c)["budget"]["dailyUsedCents"]) <= budget


def test_rate_limit_per_user_per_minute_with_window_edges(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    provider = ScriptedProvider()
    server = make_server(provider, app_kwargs={"clock": clock})
    with client(server, tenants.a1) as c:
        put_budget(c, messagesPerMinutePerUser=2)
        sid = create_session(c)
        assert send(c, sid, "one").types[-1] == "done"
        clock.advance(seconds=30)
        assert send(c, sid, "two").types[-1] == "done"
        clock.advance(seconds=29.5)
        refused = c.post(f"{API}/sessions/{sid}/messages", json={"content": "three"})
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"  # "one" leaves the window in half a second
        assert refused.json()["code"] == "rate_limited"
        refused = c.post(f"{API}/sessions/{sid}/messages", json={"content": "again"})
        assert refused.status_code == 429  # refused attempts stored nothing...
        clock.advance(seconds=1)
        assert send(c, sid, "three").types[-1] == "done"  # ...so they did not count
        assert len(provider.calls) == 3
    with client(server, tenants.a2) as other:  # another user of the same org has their own window
        assert send(other, create_session(other), "mine").types[-1] == "done"


def test_rate_limit_per_organization_per_hour(make_server: ServerFactory, tenants: Tenants) -> None:
    clock = FakeClock()
    server = make_server(ScriptedProvider(), app_kwargs={"clock": clock})
    with client(server, tenants.a1) as a1, client(server, tenants.a2) as a2, client(server, tenants.b1) as b1:
        put_budget(a1, messagesPerHourPerOrg=2)
        assert send(a1, create_session(a1)).types[-1] == "done"
        clock.advance(minutes=10)
        assert send(a2, create_session(a2)).types[-1] == "done"
        refused = a1.post(f"{API}/sessions/{create_session(a1)}/messages", json={"content": "x"})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) == 50 * 60
        assert send(b1, create_session(b1)).types[-1] == "done"  # org B is not limited
        clock.advance(minutes=50, seconds=1)
        assert send(a1, create_session(a1)).types[-1] == "done"


def test_budget_defaults_flow_into_new_sessions(make_server: ServerFactory, tenants: Tenants) -> None:
    server = make_server(ScriptedProvider(), PARLEY_ALLOWED_MODELS="model-b")
    with client(server, tenants.a1) as c:
        put_budget(c, maxTurnsPerSession=1, allowedModels=["model-b"])
        created = c.post(f"{API}/sessions", json={}).json()
        assert created["model"] == "model-b"  # the default is not on the org's list
        assert_error(c.post(f"{API}/sessions", json={"model": "test-model"}), 400, "model_not_allowed")
        sid = created["id"]
        assert detail(c, sid)["session"]["maxTurns"] == 1
        assert send(c, sid).types[-1] == "done"
        assert_error(c.post(f"{API}/sessions/{sid}/messages", json={"content": "again"}), 409, "max_turns_reached")
