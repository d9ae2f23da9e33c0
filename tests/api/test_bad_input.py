"""Bad input on every write route: a clear error in the envelope, and nothing stored or lost."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.conftest import API, Shared, assert_error, create_session, detail, send
from tests.support.sse_client import read_stream

MISSING = "00000000-0000-4000-8000-000000000000"
JSON = {"content-type": "application/json"}


def _untouched(c: Any, sid: str) -> None:
    body = detail(c, sid)
    assert body["messages"] == []
    assert body["session"]["turnCount"] == 0
    assert body["session"]["title"] is None
    assert body["session"]["status"] == "active"


@pytest.fixture
def sid(shared: Shared) -> str:
    with shared.client(shared.tenants.a1) as c:
        return create_session(c)


@pytest.mark.parametrize("raw", [b"{not json", b'{"content": "hi"', b"", b"\xff\xfe", b'{"content": "hi"} trailing'])
def test_malformed_json_is_400_on_every_json_route(shared: Shared, sid: str, raw: bytes) -> None:
    with shared.client(shared.tenants.a1) as c:
        for method, path in (
            ("POST", "/sessions"),
            ("POST", f"/sessions/{sid}/messages"),
            ("PATCH", f"/sessions/{sid}"),
        ):
            r = c.request(method, API + path, content=raw, headers=JSON)
            if raw == b"" and path == "/sessions":
                continue  # an empty body is "no options" for create
            body = assert_error(r, 400 if raw else 422, "malformed_json" if raw else "validation_error")
            assert body["error"]
        _untouched(c, sid)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": None},
        {"content": 123},
        {"content": ["hi"]},
        {"content": ""},
        {"content": "   \n\t  "},
        {"content": "\x00\x01\x02\u2028"},
        {"content": "hi", "unknown": True},
        {"content": "hi", "pageContext": "not an object"},
        ["content", "hi"],
        "hi",
    ],
    ids=[
        "missing",
        "null",
        "number",
        "list",
        "empty",
        "whitespace",
        "control-only",
        "unknown-field",
        "bad-context",
        "array-body",
        "string-body",
    ],
)
def test_invalid_message_bodies_are_422_and_store_nothing(shared: Shared, sid: str, body: Any) -> None:
    with shared.client(shared.tenants.a1) as c:
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json=body) as r:
            answer = read_stream(r)
        assert answer.status == 422, answer.body
        assert set(answer.body) == {"error", "code"}
        assert answer.body["code"] == "validation_error"
        _untouched(c, sid)


def test_content_over_10000_characters_is_413_and_stores_nothing(shared: Shared, sid: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        r = c.post(f"{API}/sessions/{sid}/messages", json={"content": "x" * 10_001})
        body = assert_error(r, 413, "content_too_large")
        assert "10000" in body["error"]
        _untouched(c, sid)


def test_content_of_exactly_10000_characters_is_accepted(shared: Shared, sid: str) -> None:
    text = "y" * 10_000
    with shared.client(shared.tenants.a1) as c:
        stream = send(c, sid, "  \n" + text + "\n  ")  # counted after trimming
        assert stream.status == 200
        assert stream.types[-1] == "done"
        assert detail(c, sid)["messages"][0]["content"] == text


def test_control_characters_are_stripped_from_stored_content(shared: Shared, sid: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        send(c, sid, "\x00hel\x07lo\r\nworld\t!\x1b")
        assert detail(c, sid)["messages"][0]["content"] == "hello\nworld\t!"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/sessions", {"nope": 1}),
        ("POST", "/sessions", {"orgId": 5}),
        ("POST", "/sessions", {"pageContext": [1, 2]}),
        ("PATCH", "/sessions/{sid}", {"title": "ok", "nope": 1}),
    ],
)
def test_unknown_or_mistyped_fields_are_422(shared: Shared, sid: str, method: str, path: str, body: Any) -> None:
    with shared.client(shared.tenants.a1) as c:
        assert_error(c.request(method, API + path.format(sid=sid), json=body), 422, "validation_error")
        _untouched(c, sid)


def test_body_over_256_kib_is_413(shared: Shared, sid: str) -> None:
    padding = " " * (256 * 1024)
    raw = ('{"content": "hi"' + padding + "}").encode()
    with shared.client(shared.tenants.a1) as c:
        for path in ("/sessions", f"/sessions/{sid}/messages"):
            assert_error(c.post(API + path, content=raw, headers=JSON), 413, "content_too_large")
        _untouched(c, sid)


def test_chunked_body_over_256_kib_is_413_too(shared: Shared, sid: str) -> None:
    """Without a Content-Length the limit must still hold (the body arrives in chunks)."""

    def chunks() -> Iterator[bytes]:
        yield b'{"content": "hi"'
        for _ in range(64):
            yield b" " * 8192  # 512 KiB of padding in total
        yield b"}"

    with shared.client(shared.tenants.a1) as c:
        with c.stream("POST", f"{API}/sessions/{sid}/messages", content=chunks(), headers=JSON) as r:
            answer = read_stream(r)
        assert answer.status == 413, (answer.status, answer.body, answer.types)
        assert answer.body["code"] == "content_too_large"
        _untouched(c, sid)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"title": "x"}),
        ("DELETE", "", None),
        ("POST", "/messages", {"content": "hi"}),
        ("GET", "/events", None),
        ("POST", "/interrupt", None),
    ],
)
def test_unknown_session_id_is_404_session_not_found(shared: Shared, method: str, path: str, body: Any) -> None:
    with shared.client(shared.tenants.a1) as c:
        for unknown in (MISSING, "not-a-uuid"):
            with c.stream(method, f"{API}/sessions/{unknown}{path}", json=body) as r:
                answer = read_stream(r)
            assert answer.status == 404
            assert answer.body == {"error": "Session not found.", "code": "session_not_found"}


def test_unknown_route_and_wrong_method_use_the_envelope(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        assert_error(c.get(f"{API}/nothing-here"), 404, "not_found")
        assert_error(c.put(f"{API}/sessions", json={}), 405, "method_not_allowed")


@pytest.mark.parametrize("token", [None, "prl_not-a-real-token"], ids=["anonymous", "unknown-token"])
def test_without_a_valid_token_every_bad_request_is_401_first(shared: Shared, sid: str, token: str | None) -> None:
    """Whatever else is wrong (bytes that are not text, broken JSON, a wrong shape, a bad query),
    a caller without a valid token learns only that: 401."""
    with shared.client(token) as c:
        for method, path, raw in (
            ("POST", "/sessions", b"\xff\xff"),
            ("POST", "/sessions", b"{not json"),
            ("POST", "/sessions", b'{"title": 5}'),
            ("PATCH", f"/sessions/{sid}", b"\xff\xff"),
            ("PATCH", f"/sessions/{sid}", b'{"title": ""}'),
            ("POST", f"/sessions/{sid}/messages", b"\xff\xff"),
            ("POST", f"/sessions/{sid}/messages", b'{"content": 5}'),
            ("PUT", "/budget", b'{"dailyBudgetCents": "lots"}'),
        ):
            assert_error(c.request(method, API + path, content=raw, headers=JSON), 401, "unauthorized")
        assert_error(c.get(f"{API}/sessions", params={"limit": 1000}), 401, "unauthorized")
        assert_error(c.get(f"{API}/sessions/search", params={"q": "x"}), 401, "unauthorized")
    with shared.client(shared.tenants.a1) as c:
        _untouched(c, sid)
        assert_error(c.get(f"{API}/sessions", params={"limit": 1000}), 422, "validation_error")


NON_FINITE = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_page_context_with_a_non_finite_number_is_422_and_stores_nothing(
    shared: Shared, sid: str, literal: str, where: str
) -> None:
    """JSON parsers read these as inf or nan, which would be stored as null: refused instead."""
    context = f'{{"a": {literal}}}' if where == "top" else f'{{"a": {{"b": [1, {literal}]}}}}'
    with shared.client(shared.tenants.a1) as c:
        before = c.get(f"{API}/sessions", params={"limit": 50}).json()["total"]
        r = c.post(f"{API}/sessions", content=f'{{"pageContext": {context}}}'.encode(), headers=JSON)
        assert "pageContext" in assert_error(r, 422, "validation_error")["error"]
        assert c.get(f"{API}/sessions", params={"limit": 50}).json()["total"] == before
        raw = f'{{"content": "x", "pageContext": {context}}}'.encode()
        with c.stream("POST", f"{API}/sessions/{sid}/messages", content=raw, headers=JSON) as r:
            answer = read_stream(r)
        assert answer.status == 422, answer.body
        assert answer.body["code"] == "validation_error"
        assert "pageContext" in answer.body["error"]
        _untouched(c, sid)


def test_a_page_context_with_large_finite_numbers_is_stored_as_sent(shared: Shared, sid: str) -> None:
    context = {"big": 1.7976931348623157e308, "small": -5e-324, "n": [0.5, -2]}
    with shared.client(shared.tenants.a1) as c:
        created = create_session(c, pageContext=context)
        assert detail(c, created)["session"]["contextSnapshot"] == context


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/budget", {"enabled": "yes"}, "enabled"),
        ("PUT", "/budget", {"enabled": 1}, "enabled"),
        ("PUT", "/budget", {"enabled": "false"}, "enabled"),
        ("PUT", "/budget", {"dailyBudgetCents": "5"}, "dailyBudgetCents"),
        ("PUT", "/budget", {"monthlyBudgetCents": "0.5"}, "monthlyBudgetCents"),
        ("PUT", "/budget", {"monthlyBudgetCents": True}, "monthlyBudgetCents"),
        ("PUT", "/budget", {"dailyBudgetCents": 123456789012.123456}, "dailyBudgetCents"),
        ("PUT", "/budget", {"maxTurnsPerSession": "5"}, "maxTurnsPerSession"),
        ("PUT", "/budget", {"maxTurnsPerSession": 5.0}, "maxTurnsPerSession"),
        ("PUT", "/budget", {"messagesPerMinutePerUser": True}, "messagesPerMinutePerUser"),
        ("POST", "/sessions/{sid}/pause", {"paused": "yes"}, "paused"),
        ("POST", "/sessions/{sid}/approve-plan", {"approved": 1}, "approved"),
    ],
)
def test_write_bodies_take_json_types_strictly(
    shared: Shared, sid: str, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    """A boolean is a JSON boolean, an integer a JSON integer, money a JSON number: a string or
    another type that looks alike is refused, and nothing changes."""
    with shared.client(shared.tenants.a1) as c:
        r = c.request(method, API + path.format(sid=sid), json=body)
        message = assert_error(r, 422, "validation_error")["error"]
        assert message.startswith(f"{field}: "), message
        assert "Value error" not in message, message
        assert c.get(f"{API}/usage").json()["budget"] is None
        _untouched(c, sid)


def test_budget_cents_are_json_numbers_read_exactly(shared: Shared) -> None:
    with shared.client(shared.tenants.b1) as c:
        r = c.put(f"{API}/budget", json={"dailyBudgetCents": 0.000001, "monthlyBudgetCents": 123456789.123456})
        assert r.status_code == 200, r.text
        budget = r.json()["budget"]
        assert (budget["dailyBudgetCents"], budget["monthlyBudgetCents"]) == ("0.000001", "123456789.123456")
        r = c.put(f"{API}/budget", json={"enabled": False, "dailyBudgetCents": None})
        assert r.status_code == 200, r.text
        assert (r.json()["budget"]["enabled"], r.json()["budget"]["dailyBudgetCents"]) == (False, None)
