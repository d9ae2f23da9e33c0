"""POST .../messages at its edges: how the body is read, the order of refusals, headers, docs.

The route is served by its own ASGI endpoint (api/turn_endpoint.py), not by FastAPI; these are the
answers FastAPI gave, which it must keep giving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.routing import Match

from parley.api.turn_endpoint import TurnEndpoint, turn_route, turn_session_id
from parley.app import create_app
from parley.config import load_settings
from tests.api.conftest import API, Shared, assert_error, create_session, detail
from tests.conftest import base_env
from tests.support.sse_client import Stream, read_stream

JSON = {"content-type": "application/json"}
NOT_A_MODEL = "body: Input should be a valid dictionary or object to extract fields from"


def _post(c: httpx2.Client, sid: str, raw: bytes, headers: dict[str, str] | None = None) -> Stream:
    headers = JSON if headers is None else headers
    with c.stream("POST", f"{API}/sessions/{sid}/messages", content=raw, headers=headers) as r:
        return read_stream(r)


def _refused(answer: Stream, status: int, code: str) -> str:
    assert answer.status == status, (answer.status, answer.body, answer.types)
    assert set(answer.body) == {"error", "code"}, answer.body
    assert answer.body["code"] == code, answer.body
    message: str = answer.body["error"]
    return message


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.api+json"]
)
def test_json_content_types_with_parameters_case_or_suffix_are_read(shared: Shared, content_type: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        answer = _post(c, sid, b'{"content": "typed"}', {"content-type": content_type})
        assert answer.types[-1] == "done"
        assert detail(c, sid)["messages"][0]["content"] == "typed"


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_json_is_422(shared: Shared, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _refused(_post(c, sid, b'{"content": "hi"}', headers), 422, "validation_error") == NOT_A_MODEL
        assert detail(c, sid)["messages"] == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "body: Field required"), (b"null", NOT_A_MODEL), (b"[]", NOT_A_MODEL)],
    ids=["empty", "null", "array"],
)
def test_no_body_or_a_body_that_is_not_an_object_is_422(shared: Shared, raw: bytes, message: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _refused(_post(c, sid, raw), 422, "validation_error") == message


def test_json_the_standard_library_reads_is_read_the_same(shared: Shared) -> None:
    """A byte order mark, UTF-16 and integers of 19 digits: what orjson alone would refuse or round."""
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _post(c, sid, b'\xef\xbb\xbf{"content": "with a BOM"}').types[-1] == "done"
        assert _post(c, sid, '{"content": "in UTF-16"}'.encode("utf-16")).types[-1] == "done"
        raw = b'{"content": "long id", "pageContext": {"id": 1234567890123456789, "x": 0.1}}'
        assert _post(c, sid, raw).types[-1] == "done"
        body = detail(c, sid)
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == ["with a BOM", "in UTF-16", "long id"]
    assert body["session"]["contextSnapshot"] == {"id": 1234567890123456789, "x": 0.1}


def test_page_context_by_its_field_name_is_read_but_not_both_names(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _post(c, sid, b'{"content": "snake", "page_context": {"page": "a"}}').types[-1] == "done"
        assert detail(c, sid)["session"]["contextSnapshot"] == {"page": "a"}
        both = b'{"content": "both", "pageContext": {"page": "b"}, "page_context": {"page": "c"}}'
        message = _refused(_post(c, sid, both), 422, "validation_error")
        assert message == "page_context: Extra inputs are not permitted"


def test_validation_messages_name_each_field(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        message = _refused(_post(c, sid, b'{"content": 1, "pageContext": [], "x": 0}'), 422, "validation_error")
    assert message == (
        "content: Input should be a valid string; pageContext: Input should be a valid dictionary; "
        "x: Extra inputs are not permitted"
    )


def test_order_of_refusals_for_unreadable_bodies(shared: Shared) -> None:
    """The token first (401) whatever is wrong with the body; then bytes that are not text, or text
    that is not JSON, are 400 even for a read-only token (403 needs a body that parses)."""
    sid = "00000000-0000-4000-8000-000000000000"
    with shared.client(None) as anonymous:
        _refused(_post(anonymous, sid, b"\xff\xff"), 401, "unauthorized")
        _refused(_post(anonymous, sid, b"{not json"), 401, "unauthorized")
        _refused(_post(anonymous, sid, b'{"content": 5}'), 401, "unauthorized")
    with shared.client(shared.tenants.a1_read_only) as reader:
        message = _refused(_post(reader, sid, b"\xff\xff"), 400, "http_error")
        assert message == "There was an error parsing the body"
        _refused(_post(reader, sid, b"{not json"), 400, "malformed_json")
        _refused(_post(reader, sid, b'{"content": 5}'), 403, "forbidden")
    with shared.client(shared.tenants.a1) as c:
        _refused(_post(c, sid, b'{"content": 5}'), 422, "validation_error")
        _refused(_post(c, sid, b'{"content": "hi"}'), 404, "session_not_found")


def test_a_body_that_arrives_in_many_pieces_is_read_whole(shared: Shared) -> None:
    raw = b'{"content": "padded"' + b" " * (200 * 1024) + b"}"  # under the limit, several socket reads
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _post(c, sid, raw).types[-1] == "done"

        def pieces() -> Any:
            yield b'{"content": '
            yield b'"chunked"}'

        with c.stream("POST", f"{API}/sessions/{sid}/messages", content=pieces(), headers=JSON) as r:
            assert read_stream(r).types[-1] == "done"
        assert [m["content"] for m in detail(c, sid)["messages"] if m["role"] == "user"] == ["padded", "chunked"]


def test_headers_of_the_stream_and_of_a_refusal(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "hi"}) as r:
            r.read()
            stream_headers = r.headers
    assert stream_headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream_headers["cache-control"] == "no-cache"
    assert stream_headers["x-accel-buffering"] == "no"
    assert stream_headers["x-content-type-options"] == "nosniff"
    assert stream_headers["referrer-policy"] == "no-referrer"
    with shared.client(None) as anonymous:
        refused = anonymous.post(f"{API}/sessions/{sid}/messages", json={"content": "hi"})
    assert_error(refused, 401, "unauthorized")
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert refused.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405_allowing_post(shared: Shared, method: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        r = c.request(method, f"{API}/sessions/{create_session(c)}/messages")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_openapi_documents_the_message_body(shared: Shared) -> None:
    with shared.client(None) as c:
        spec = c.get("/openapi.json").json()
    operation = spec["paths"][f"{API}/sessions/{{session_id}}/messages"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/SendMessageBody"}
    body = spec["components"]["schemas"]["SendMessageBody"]
    assert set(body["properties"]) == {"content", "pageContext"}
    assert body["required"] == ["content"]


def test_turns_are_served_by_the_turn_endpoint(tmp_path: Path) -> None:
    """The documented FastAPI route is shadowed: the first route to match a POST is the endpoint."""
    app = create_app(load_settings(base_env(tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")))
    path = f"{API}/sessions/3f0c2a8e-1111-4222-8333-444455556666/messages"
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            assert isinstance(child["endpoint"], TurnEndpoint)
            assert child["path_params"] == {"session_id": path.split("/")[-2]}
            return
    raise AssertionError("no route matched")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"content": "hi \\ud800 there"}', "content is not valid text: it holds a lone surrogate ('\\ud800')."),
        (
            b'{"content": "hi", "pageContext": {"n": 123456789012345678901234567890}}',
            "pageContext cannot be stored: Integer exceeds 64-bit range.",
        ),
        (
            b'{"content": "hi", "pageContext": ' + b'{"a": ' * 300 + b"1" + b"}" * 301,
            "pageContext cannot be stored: Recursion limit reached.",
        ),
        (
            b'{"content": "hi", "pageContext": {"k": "\\udfff"}}',
            "pageContext cannot be stored: str is not valid UTF-8: surrogates not allowed.",
        ),
    ],
)
def test_text_no_database_can_store_is_422_and_stores_nothing(shared: Shared, raw: bytes, message: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _refused(_post(c, sid, raw), 422, "validation_error") == message
        assert detail(c, sid)["messages"] == []
        assert _post(c, sid, b'{"content": "still works"}').types[-1] == "done"


def test_titles_with_a_lone_surrogate_are_422(shared: Shared) -> None:
    """(Refused by the body's schema, as the content of a turn is by its endpoint.)"""
    with shared.client(shared.tenants.a1) as c:
        refused = c.post(f"{API}/sessions", content=b'{"title": "a \\ud83d b"}', headers=JSON)
        assert_error(refused, 422, "validation_error")
        sid = create_session(c)
        renamed = c.patch(f"{API}/sessions/{sid}", content=b'{"title": "x \\ud83d"}', headers=JSON)
        assert_error(renamed, 422, "validation_error")
        assert "unicode" in renamed.json()["error"]
        assert detail(c, sid)["session"]["title"] is None


def test_the_turn_lane_answers_errors_as_the_stack_does(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns skip the middleware stack: its 413, its 500 and its headers must come from the lane."""
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        too_large = c.post(f"{API}/sessions/{sid}/messages", content=b" " * (256 * 1024 + 1), headers=JSON)
        assert_error(too_large, 413, "content_too_large")
        assert too_large.headers["x-content-type-options"] == "nosniff"

        async def broken(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(shared.server.app.state.services.sessions, "send_message", broken)
        failed = c.post(f"{API}/sessions/{sid}/messages", json={"content": "hi"})
    assert_error(failed, 500, "internal_error")
    assert "boom" not in failed.text
    assert failed.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    "path",
    [
        f"{API}/sessions/abc/messages",
        f"{API}/sessions/abc/messages/",
        f"{API}/sessions//messages",
        f"{API}/sessions/a/b/messages",
        f"{API}/sessions/abc/messagesx",
        f"{API}/sessions/abc/messages/extra",
        f"/x{API}/sessions/abc/messages",
        f"{API}/sessions/%20/messages",
    ],
)
def test_the_turn_lane_takes_exactly_the_paths_the_route_matches(path: str) -> None:
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
    match, child = turn_route().matches(scope)
    expected = child["path_params"]["session_id"] if match is Match.FULL else None
    assert turn_session_id(path) == expected
