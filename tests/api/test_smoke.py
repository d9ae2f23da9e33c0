from __future__ import annotations

from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import ScriptedProvider
from tests.support.sse_client import read_stream


def test_a_turn_streams_and_persists(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider()
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        created = c.post("/api/v1/ai/sessions", json={})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        with c.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "Hi there"}) as r:
            stream = read_stream(r)
        assert stream.types == [
            "title_updated",
            "message_start",
            "content_delta",
            "content_delta",
            "content_delta",
            "message_end",
            "done",
        ]
        assert stream.text == "Hello there!"
        detail = c.get(f"/api/v1/ai/sessions/{sid}").json()
        assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
        assert detail["session"]["turnCount"] == 1
