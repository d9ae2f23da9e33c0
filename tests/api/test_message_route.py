"""POST .../messages at its edges: how the body is read, the order of refusals, headers, docs.

The route is a plain ASGI endpoint on an ordinary route inside the app's middleware stack
(`api/routes.py`, `SendMessage`): its body is validated by the same schema, and its refusals go
through the same error handlers, as every other route's.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.api.conftest import API, Shared, assert_error, create_session, detail
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import ScriptedProvider
from tests.support.sse_client import Stream, read_stream

JSON = {"content-type": "application/json"}
NOT_AN_OBJECT = "body: Input should be an object"


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


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "body: Field required"), (b"null", NOT_AN_OBJECT), (b"[]", NOT_AN_OBJECT)],
    ids=["empty", "null", "array"],
)
def test_no_body_or_a_body_that_is_not_an_object_is_422(shared: Shared, raw: bytes, message: str) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        assert _refused(_post(c, sid, raw), 422, "validation_error") == message
        assert detail(c, sid)["messages"] == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xff",
        b'\xef\xbb\xbf{"content": "with a BOM"}',
        '{"content": "in UTF-16"}'.encode("utf-16"),
        b'{"content": "hi \\ud800 there"}',  # a lone surrogate is not Unicode text
        b'{"content": "hi", "pageContext": {"k": "\\udfff"}}',
        b'{"content": "hi", "pageContext": ' + b'{"a": ' * 300 + b"1" + b"}" * 301,  # nested past the parser's limit
    ],
    ids=["not-json", "not-text", "bom", "utf-16", "lone-surrogate", "surrogate-in-context", "too-deep"],
)
def test_bodies_that_are_not_json_text_are_400_and_store_nothing(shared: Shared, raw: bytes) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        _refused(_post(c, sid, raw), 400, "malformed_json")
        assert detail(c, sid)["messages"] == []


def test_integers_of_any_length_are_kept_exact(shared: Shared) -> None:
    with shared.client(shared.tenants.a1) as c:
        sid = create_session(c)
        raw = b'{"content": "long id", "pageContext": {"id": 1234567890123456789, "x": 0.1}}'
        assert _post(c, sid, raw).types[-1] == "done"
        body = detail(c, sid)
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
        "content: must be a JSON string; pageContext: must be a JSON object; x: Extra inputs are not permitted"
    )


def test_order_of_refusals_for_unreadable_bodies(shared: Shared) -> None:
    """The token first (401) whatever is wrong with the body; then a body that is not JSON is 400
    even for a read-only token (403 needs a body that is a message), as on every route."""
    sid = "00000000-0000-4000-8000-000000000000"
    with shared.client(None) as anonymous:
        _refused(_post(anonymous, sid, b"\xff\xff"), 401, "unauthorized")
        _refused(_post(anonymous, sid, b"{not json"), 401, "unauthorized")
        _refused(_post(anonymous, sid, b'{"content": 5}'), 401, "unauthorized")
    with shared.client(shared.tenants.a1_read_only) as reader:
        _refused(_post(reader, sid, b"\xff\xff"), 400, "malformed_json")
        _refused(_post(reader, sid, b"{not json"), 400, "malformed_json")
        _refused(_post(reader, sid, b'{"content": 5}'), 422, "validation_error")
        _refused(_post(reader, sid, b'{"content": "hi"}'), 403, "forbidden")
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
    assert set(body["properties"]) == {"content", "pageContext", "toolChoice"}
    assert body["required"] == ["content"]


class _Stamp:
    """A middleware a deployment might add: it stamps every response's head."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


def test_a_middleware_added_to_the_app_applies_to_the_turn_route_as_to_every_route(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    server = make_server(ScriptedProvider(), app_hook=lambda app: app.add_middleware(_Stamp))
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "hi"}) as turn:
            assert read_stream(turn).types[-1] == "done"
            assert turn.headers["x-stamp"] == "1"
        refused = c.post(f"{API}/sessions/{sid}/messages", json={"content": 5})
        listed = c.get(f"{API}/sessions")
    assert_error(refused, 422, "validation_error")
    assert refused.headers["x-stamp"] == "1"
    assert listed.headers["x-stamp"] == "1"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"content": "hi", "pageContext": {"n": 123456789012345678901234567890}}',
            "pageContext cannot be stored: Integer exceeds 64-bit range.",
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


def test_the_turn_route_answers_errors_as_every_route_does(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its 413 comes from the stack's body limit, its 500 from the app's handler, with the usual headers."""
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
