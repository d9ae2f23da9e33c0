"""The terminal client's stream reading (`parley chat`'s `Api.stream_turn`) against a real server.

The client reads on a helper thread and puts what it read on a queue, as `parley chat` does; the
test takes the main thread's place. A proxy in front of the server cuts the connection mid-reply
to show the client re-attaching after the last event it read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from parley.client.api import Api
from tests.api.conftest import create_session, detail
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.tcp_proxy import TcpProxy

TOKENS = [f"w{i} " for i in range(40)]

OnEvent = Callable[[str, dict[str, Any]], None]


def run_turn(api: Api, sid: str, content: str, on_event: OnEvent | None = None) -> list[tuple[str, Any]]:
    """What the client's reading thread hands over for one turn, up to its final `end`."""
    out: queue.Queue[tuple[str, Any]] = queue.Queue()
    reading = threading.Thread(target=api.stream_turn, args=(sid, content, out), daemon=True)
    reading.start()
    handed: list[tuple[str, Any]] = []
    while (item := out.get(timeout=15))[0] != "end":
        handed.append(item)
        if item[0] == "event" and on_event is not None:
            on_event(*item[1])
    reading.join(timeout=5)
    return handed


def text_of(handed: list[tuple[str, Any]]) -> str:
    return "".join(data["delta"] for kind, (event, data) in handed if kind == "event" and event == "content_delta")


def test_the_client_hands_over_every_event_of_a_reply(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider(Reply(tokens=TOKENS[:5], reasoning=["Thinking."]))
    server = make_server(provider)
    api = Api(server.url, tenants.a1)
    try:
        sid = api.call("POST", "/api/v1/ai/sessions", json={})["id"]
        handed = run_turn(api, sid, "hello")
    finally:
        api.http.close()
    assert {kind for kind, _ in handed} == {"event"}
    events = [event for _, (event, _) in handed]
    assert events == [
        "title_updated",
        "message_start",
        "reasoning_delta",
        *["content_delta"] * 5,
        "message_end",
        "done",
    ]
    assert handed[2][1][1] == {"type": "reasoning_delta", "delta": "Thinking."}
    assert text_of(handed) == "".join(TOKENS[:5])


def test_a_cut_connection_reattaches_after_the_last_event_read(make_server: ServerFactory, tenants: Tenants) -> None:
    provider = ScriptedProvider(Reply(tokens=TOKENS, delay=0.05))
    server = make_server(provider)
    proxy = TcpProxy(server.port)
    api = Api(proxy.url, tenants.a1)
    deltas = 0
    cuts: list[int] = []

    def cut_after_three_deltas(event: str, _data: dict[str, Any]) -> None:
        nonlocal deltas
        if event == "content_delta":
            deltas += 1
            if deltas == 3:
                cuts.append(proxy.cut())

    try:
        with client(server, tenants.a1) as c:
            sid = create_session(c)
            handed = run_turn(api, sid, "tell me a story", cut_after_three_deltas)
            stored = detail(c, sid)["messages"][-1]
    finally:
        api.http.close()
        proxy.close()

    assert cuts == [1]
    assert {kind for kind, _ in handed} == {"event"}  # no "lost" or "failed": the client re-attached
    assert [event for _, (event, _) in handed][-2:] == ["message_end", "done"]
    assert text_of(handed) == "".join(TOKENS)  # every piece exactly once: resumed where it was cut
    assert stored["content"] == "".join(TOKENS)
    assert provider.opened == 1
    [resume] = [sent for sent in proxy.sent() if sent.startswith(b"GET ")]
    assert resume.split(b"\r\n", 1)[0].startswith(f"GET /api/v1/ai/sessions/{sid}/events ".encode())
    assert b"\r\nlast-event-id: 1-" in resume.lower()
