"""A parley process killed (SIGKILL) while a tool call runs: the call is never run again by itself.

Its row, found `executing` by the process that recovers the turn, becomes `failed` with its outcome
unknown; the reply ends as interrupted and the next turn tells the model the call has no result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.api.conftest import API, create_session, detail
from tests.conftest import Tenants
from tests.replicas.test_crashes import _process, client_at
from tests.support.parley_process import ParleyProcess
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream, tool_call_stream
from tests.support.sse_client import FrameReader

ROOT = Path(__file__).resolve().parents[2]


def test_a_crash_while_a_tool_runs_fails_the_call_and_never_runs_it_again(
    tenants: Tenants, upstream: ScriptedUpstream, data_dir: Path, processes: list[ParleyProcess]
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "ran.log"
    config = data_dir / "mcp.json"
    server = {
        "command": sys.executable,
        "args": ["-m", "tests.support.mcp_tools_server", "--log", str(log)],
        "cwd": str(ROOT),
        "requireApproval": "never",
    }
    config.write_text(json.dumps({"mcpServers": {"t": server}}))
    upstream.enqueue(tool_call_stream([("t__record_slowly", '{"note": "once", "seconds": 60}')]))
    upstream.set_default(TokenStream(tokens=["fine"]))
    first = _process(tenants, upstream, data_dir / "one", "node-a", PARLEY_MCP_CONFIG=str(config))
    processes.append(first)
    first.start()
    with client_at(first.url, tenants.a1) as c:
        sid = create_session(c)
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "record once"}) as r:
            FrameReader(r).until(lambda frame: frame.event == "tool_use_start")
            deadline = time.monotonic() + 10
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            first.kill()
    assert log.read_text() == "once\n"

    # The same machine's next process recognises its predecessor's turn at start-up.
    second = _process(tenants, upstream, data_dir / "two", "node-a", PARLEY_MCP_CONFIG=str(config))
    processes.append(second)
    second.start()
    with client_at(second.url, tenants.a1) as c:
        executions = c.get(f"{API}/sessions/{sid}/tool-executions").json()["data"]
        reply = detail(c, sid)["messages"][1]
        with c.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "did it work?"}) as r:
            after = FrameReader(r).rest()
    (call,) = executions
    assert call["status"] == "failed"
    assert "outcome is unknown" in call["errorMessage"]
    assert reply["finishReason"] == "interrupted"
    assert after[-1].event == "done"
    assert log.read_text() == "once\n"  # never run again
    sent = upstream.requests[-1].json["messages"]
    assert sent[-2]["role"] == "tool"
    assert "unknown" in sent[-2]["content"]
