"""Concurrent sends to one session: the stored conversation is totally ordered, and every model
request is exactly the stored history before it plus its own message."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.conftest import API, create_session, detail
from tests.conftest import ServerFactory, Tenants, client
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream
from tests.support.sse_client import read_stream

ROUNDS = 20
SENDERS = 50


@pytest.mark.timeout(180)  # a thousand sends: about 25 s, longer on a busy machine
def test_fifty_sends_at_once_keep_the_conversation_alternating_and_the_history_exact(
    make_server: ServerFactory, tenants: Tenants, upstream: ScriptedUpstream
) -> None:
    upstream.set_default(TokenStream(n=20, text="t{i} "))
    server = make_server(MCP_LLM_BASE_URL=upstream.base_url)
    with client(server, tenants.a1) as c, ThreadPoolExecutor(SENDERS) as pool:
        for round_ in range(ROUNDS):
            sid = create_session(c)
            before = len(upstream.requests)

            def send(i: int, sid: str = sid, round_: int = round_) -> int:
                body = {"content": f"m{round_}-{i}"}
                with (
                    client(server, tenants.a1) as own,  # a connection each, as separate clients
                    own.stream("POST", f"{API}/sessions/{sid}/messages", json=body) as r,
                ):
                    answer = read_stream(r)
                assert answer.status == 200 or answer.body["code"] == "turn_in_progress", answer.body
                return answer.status

            statuses = list(pool.map(send, range(SENDERS)))
            messages = detail(c, sid)["messages"]
            admitted = statuses.count(200)
            assert admitted >= 1
            roles = [m["role"] for m in messages]
            assert roles == ["user", "assistant"] * admitted, (round_, roles)
            assert [m["finishReason"] for m in messages] == [None, "stop"] * admitted, (round_, messages)
            # Each model request was the stored history before its message, plus that message.
            requests = upstream.requests[before:]
            assert len(requests) == admitted
            for k, request in enumerate(requests):
                sent = [(m["role"], m["content"]) for m in request.json["messages"][1:]]  # after the system prompt
                stored = [(m["role"], m["content"]) for m in messages[: 2 * k + 1]]
                assert sent == stored, (round_, k)
