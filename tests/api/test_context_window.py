"""Conversations longer than the model's window: fitted, announced, summarized, never lost.

The model server is scripted and enforces a window as vLLM does (`ScriptedUpstream(window=…)`:
a request whose prompt, counted as characters / 4, plus `max_tokens`, passes it gets vLLM's 400).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parley.providers.base import ChatMessage, ContextWindow
from tests.api.conftest import API, assert_error, create_session, detail, send
from tests.conftest import ServerFactory, Tenants, base_env, client
from tests.support.scripted_anthropic import ScriptedAnthropic, message_stream
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream

STORY = [f"Once upon a time number {i} there was a long story. " for i in range(12)]  # ~600 characters
ROOT = Path(__file__).resolve().parents[2]


def _turns(c: Any, sid: str, count: int) -> list[Any]:
    return [send(c, sid, f"Tell me story {i}, a long one please.") for i in range(count)]


def test_a_long_conversation_is_fitted_and_every_turn_is_answered(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedUpstream(window=1200, says_window="vllm", default=TokenStream(tokens=STORY)) as upstream:
        server = make_server(None, MCP_LLM_BASE_URL=upstream.base_url, MCP_LLM_MAX_TOKENS="200")
        with client(server, tenants.a1) as c:
            sid = create_session(c)
            turns = _turns(c, sid, 20)
            body = detail(c, sid)
        overflows = upstream.overflows
        last = upstream.requests[-1].json
    assert all(t.types[-2:] == ["message_end", "done"] for t in turns), [t.types for t in turns]
    assert overflows == 0  # never sent more than the window
    cuts = [t.of("context_trimmed")[0].data["droppedMessages"] if t.of("context_trimmed") else 0 for t in turns]
    assert cuts[0] == 0
    assert cuts[-1] > 0
    assert cuts == sorted(cuts)  # what the model does not see only grows
    assert all(cut % 2 == 0 for cut in cuts)  # whole exchanges: a message and its reply
    assert len(body["messages"]) == 40  # nothing stored is deleted
    marked = [m for m in body["messages"] if any(p.get("type") == "context_trimmed" for p in m["parts"])]
    assert marked  # the reply says where the model's view began, for the page after a reload
    assert last["messages"][0]["role"] == "system"
    assert last["messages"][-1] == {"role": "user", "content": "Tell me story 19, a long one please."}
    assert ScriptedUpstream.prompt_tokens(last) + last["max_tokens"] <= 1200


@pytest.mark.parametrize(
    ("server", "source", "counted"),
    [
        ("vllm", "/v1/models (max_model_len)", "; 0.275 tokens per character, from its tokenizer"),
        ("llama.cpp", "llama.cpp's /props (n_ctx)", "; 0.275 tokens per character, from its tokenizer"),
        ("ollama", "Ollama's /api/show (num_ctx)", "\n"),  # no tokenizer
    ],
)
def test_the_window_and_the_tokenizer_are_asked_of_the_model_server(
    data_dir: Path, tenants: Tenants, server: Any, source: str, counted: str
) -> None:
    with ScriptedUpstream(window=3072, says_window=server) as upstream:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_", "DATABASE_"))},
            **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
            "PYTHONPATH": str(ROOT / "src"),
        }
        shown = subprocess.run(
            [sys.executable, "-m", "parley", "check-config"], env=env, capture_output=True, text=True, timeout=60
        )
    assert shown.returncode == 0, shown.stderr
    assert f"3,072 tokens, from the model server's {source}{counted}" in shown.stdout


def test_a_window_set_by_the_operator_wins_and_an_unknown_one_says_so(data_dir: Path, tenants: Tenants) -> None:
    with ScriptedUpstream() as upstream:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_", "DATABASE_"))},
            **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
            "PYTHONPATH": str(ROOT / "src"),
        }
        unknown = subprocess.run(
            [sys.executable, "-m", "parley", "check-config"], env=env, capture_output=True, text=True, timeout=60
        )
        env["MCP_LLM_CONTEXT_WINDOW"] = "8192"
        configured = subprocess.run(
            [sys.executable, "-m", "parley", "check-config"], env=env, capture_output=True, text=True, timeout=60
        )
    assert "unknown: the model server does not say (set MCP_LLM_CONTEXT_WINDOW)" in unknown.stdout
    assert "8,192 tokens, from MCP_LLM_CONTEXT_WINDOW" in configured.stdout


def test_a_message_that_cannot_fit_alone_is_refused_before_the_model_is_called(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    provider = ScriptedProvider()
    provider.window = ContextWindow(tokens=1024, source="test")
    server = make_server(provider)
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        r = c.post(f"{API}/sessions/{sid}/messages", json={"content": "x" * 9000})
        body = assert_error(r, 413, "message_too_long_for_model")
        assert "1,024 tokens" in body["error"]
        assert detail(c, sid)["messages"] == []
        assert send(c, sid, "short").types[-1] == "done"  # nothing was left held
    assert len(provider.calls) == 1


def test_a_window_learned_from_an_overflow_error_is_fitted_at_once(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    """A server that does not say its window (llama-cpp-python): its first overflow error names it;
    the turn is fitted to it and tried once more, and so are the next ones."""
    with ScriptedUpstream(window=1200, default=TokenStream(tokens=STORY)) as upstream:
        server = make_server(None, MCP_LLM_BASE_URL=upstream.base_url, MCP_LLM_MAX_TOKENS="200")
        with client(server, tenants.a1) as c:
            sid = create_session(c)
            turns = _turns(c, sid, 12)
        overflows = upstream.overflows
    assert all(t.types[-2:] == ["message_end", "done"] for t in turns), [t.types for t in turns]
    assert overflows == 1  # once, then the window is known
    assert any(t.of("context_trimmed") for t in turns)


def _summarizing(messages: list[ChatMessage]) -> Reply:
    if messages[0].plain_text.startswith("Condense this conversation"):
        earlier = "earlier " if "Summary so far" in messages[1].plain_text else ""
        return Reply(tokens=[f"SUMMARY of the {earlier}stories"])
    return Reply(tokens=STORY)


def test_the_summarize_strategy_sends_a_summary_of_what_no_longer_fits(
    make_server: ServerFactory, tenants: Tenants
) -> None:
    provider = ScriptedProvider(default=Reply(tokens=STORY))
    provider.window = ContextWindow(tokens=1200, source="test")
    for _ in range(40):
        provider.enqueue(_summarizing)
    server = make_server(provider, MCP_LLM_MAX_TOKENS="200", PARLEY_CONTEXT_STRATEGY="summarize")
    with client(server, tenants.a1) as c:
        sid = create_session(c)
        turns = _turns(c, sid, 14)
        body = detail(c, sid)
    assert all(t.types[-2:] == ["message_end", "done"] for t in turns), [t.types for t in turns]
    trimmed = [t.of("context_trimmed")[0].data for t in turns if t.of("context_trimmed")]
    assert trimmed
    assert all(cut["summarized"] for cut in trimmed)
    summaries = [p for m in body["messages"] for p in m["parts"] if p.get("type") == "summary"]
    assert summaries[0]["text"] == "SUMMARY of the stories"
    assert summaries[-1]["text"] == "SUMMARY of the earlier stories"  # extended, not started over
    assert summaries[-1]["covers"] > summaries[0]["covers"]
    summary_calls = [m for m in provider.calls if m[0].plain_text.startswith("Condense")]
    assert len(summary_calls) == len(summaries) < len(turns)  # reused between extensions
    last = provider.calls[-1]
    assert "SUMMARY of the earlier stories" in last[0].plain_text
    # The summaries were billed with their turns.
    assert body["session"]["totalOutputTokens"] > 14 * 3


def test_anthropic_drops_in_blocks_so_the_cached_prefix_stays_put(make_server: ServerFactory, tenants: Tenants) -> None:
    with ScriptedAnthropic(default=message_stream(STORY)) as anthropic:
        server = make_server(
            None,
            MCP_LLM_PROVIDER="anthropic",
            ANTHROPIC_API_KEY="sk-ant-test-key-123",
            ANTHROPIC_BASE_URL=anthropic.base_url,
            ANTHROPIC_MAX_TOKENS="200",
            MCP_LLM_CONTEXT_WINDOW="3000",
        )
        with client(server, tenants.a1) as c:
            sid = create_session(c)
            turns = _turns(c, sid, 40)
        firsts = [r.json["messages"][0]["content"][0]["text"] for r in anthropic.requests]
    cuts = [t.of("context_trimmed")[0].data["droppedMessages"] if t.of("context_trimmed") else 0 for t in turns]
    assert cuts[-1] > 0
    assert all(cut % 16 == 0 for cut in cuts)  # eight exchanges at a time
    changes = sum(1 for a, b in itertools.pairwise(firsts) if a != b)
    assert changes < len(set(cuts)) + 1  # the first message sent changes only when a block goes
