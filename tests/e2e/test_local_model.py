"""parley against a real local model (llama-cpp-python + SmolLM2-135M): the main job, end to end.

Each test drives the public HTTP API of a parley subprocess; the model server is real, and the
recording proxy between them shows what parley actually sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import httpx2
import pytest

from parley.chat import context
from parley.providers.openai_compatible import OpenAICompatibleProvider
from tests.e2e.conftest import E2E, Api, Turn

pytestmark = pytest.mark.e2e

SHORT = " Answer in one short sentence."


def request_for(e2e: E2E, user_text: str) -> dict[str, Any]:
    """The model request whose last message is `user_text` (the newest such)."""
    matches = [
        body
        for body in e2e.proxy.chat_requests()
        if body["messages"] and body["messages"][-1] == {"role": "user", "content": user_text}
    ]
    assert matches, f"no model request ended with the user message {user_text!r}"
    return matches[-1]


def dialogue(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, content) of the request's messages, system prompt left out."""
    return [(m["role"], m["content"].strip()) for m in body["messages"] if m["role"] != "system"]


def assert_completed(turn: Turn) -> None:
    assert turn.status == 200, turn.body
    assert turn.types[-2:] == ["message_end", "done"], turn.types
    assert "error" not in turn.types
    assert turn.deltas() > 0
    assert turn.text.strip()


def assistant_messages(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in session["messages"] if m["role"] == "assistant"]


def long_prompt(chars: int) -> str:
    """Varied made-up words: tokenizes to far more tokens than plain English of the same length."""
    rng = random.Random(20261125)
    syllables = ["zor", "bli", "kat", "mun", "dre", "vop", "quil", "sna", "ter", "ix", "plo", "gha"]
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return "Summarize this: " + " ".join(words)


@pytest.mark.timeout(150)
def test_three_turns_carry_history_to_the_model_and_usage_is_estimated(e2e: E2E, api: Api) -> None:
    session = api.create_session()
    prompts = [
        "My name is Zorblax and I like red apples." + SHORT,
        "What fruit do I like?" + SHORT,
        "What is my name?" + SHORT,
    ]
    turns = []
    for prompt in prompts:
        turn = api.turn(session["id"], prompt)
        assert_completed(turn)
        assert turn.first("message_end")["usageEstimated"] is True
        turns.append(turn)
    assert turns[0].types[0] == "title_updated"
    assert "title_updated" not in turns[1].types

    second, third = request_for(e2e, prompts[1]), request_for(e2e, prompts[2])
    first_reply, second_reply = turns[0].text.strip(), turns[1].text.strip()
    assert dialogue(second)[:2] == [("user", prompts[0]), ("assistant", first_reply)]
    assert dialogue(third)[:4] == [
        ("user", prompts[0]),
        ("assistant", first_reply),
        ("user", prompts[1]),
        ("assistant", second_reply),
    ]

    stored = api.get_session(session["id"])
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"] * 3
    for message, turn in zip(assistant_messages(stored), turns, strict=True):
        assert message["content"].strip() == turn.text.strip()
        assert message["usageEstimated"] is True
        assert message["outputTokens"] > 0
        assert message["inputTokens"] > 0
    # Input estimates grow with the history they cover.
    inputs = [m["inputTokens"] for m in assistant_messages(stored)]
    assert inputs[0] < inputs[1] < inputs[2]


@pytest.mark.timeout(120)
def test_stop_keeps_the_partial_reply_and_the_next_turn_starts_promptly(e2e: E2E, api: Api) -> None:
    session = api.create_session()
    interrupted: list[httpx2.Response] = []

    def stop_after_a_few_deltas(event: str, _data: dict[str, Any], turn: Turn) -> None:
        if event == "content_delta" and turn.deltas() == 5 and not interrupted:
            interrupted.append(api.interrupt(session["id"]))

    stopped = api.turn(
        session["id"], "Write a long story about a dragon who learns to bake bread.", stop_after_a_few_deltas
    )
    assert interrupted, "the reply ended before five deltas arrived"
    assert interrupted[0].status_code == 200, interrupted[0].text
    assert interrupted[0].json() == {"success": True, "interrupted": True}
    assert stopped.types[-1] == "done"
    assert "message_end" not in stopped.types
    assert "error" not in stopped.types
    partial = stopped.text
    assert partial.strip()

    stored = api.get_session(session["id"])
    [message] = assistant_messages(stored)
    assert message["finishReason"] == "interrupted"
    assert message["content"].strip()
    assert partial.startswith(message["content"]) or message["content"].startswith(partial)

    nxt = api.turn(session["id"], "Say hello." + SHORT)
    assert_completed(nxt)
    ttft = nxt.time_of_first("content_delta")
    print(f"\nnext-turn time to first token after Stop: {ttft:.2f} s (partial reply: {len(partial)} chars)")
    assert ttft < 10.0


@pytest.mark.timeout(90)
def test_a_message_longer_than_the_context_window_is_refused_before_the_model(e2e: E2E, api: Api) -> None:
    prompt = long_prompt(9_000)
    tokenized = httpx2.post(
        e2e.model.base_url.removesuffix("/v1") + "/extras/tokenize",
        json={"input": prompt},
        headers={"Authorization": f"Bearer {e2e.model.api_key}"},
        timeout=30,
    )
    assert tokenized.status_code == 200, tokenized.text
    assert len(tokenized.json()["tokens"]) > e2e.model.n_ctx, "the prompt must overflow the window"

    session = api.create_session()
    sent_before = len(e2e.proxy.chat_requests())
    turn = api.turn(session["id"], prompt)
    assert turn.status == 413, turn.body
    assert json.loads(turn.body)["code"] == "message_too_long_for_model"
    assert len(e2e.proxy.chat_requests()) == sent_before  # the model never saw it

    stored = api.get_session(session["id"])
    assert stored["messages"] == []


@pytest.mark.timeout(600)
def test_twenty_long_turns_in_one_session_are_all_answered(e2e: E2E, api: Api) -> None:
    """The window is 2,048 tokens and each answer up to 256: from the sixth turn or so the history
    no longer fits whole (without fitting, every turn from the seventh failed). Every turn is
    answered, and the cut is announced."""
    session = api.create_session()
    turns = [api.turn(session["id"], f"Tell me a long story about a {animal}.") for animal in ANIMALS]
    for turn in turns:
        assert_completed(turn)
    cuts = [turn.first("context_trimmed")["droppedMessages"] for turn in turns if "context_trimmed" in turn.types]
    assert cuts, "the history outgrew the window: the cut must be announced"
    assert cuts == sorted(cuts)
    assert len(assistant_messages(api.get_session(session["id"]))) == len(ANIMALS)  # everything is kept
    last = e2e.proxy.chat_requests()[-1]
    assert last["messages"][-1] == {"role": "user", "content": f"Tell me a long story about a {ANIMALS[-1]}."}


ANIMALS = [
    "cat", "dog", "fox", "owl", "bear", "wolf", "hare", "crow", "seal", "deer",
    "frog", "goat", "lion", "mole", "newt", "orca", "puma", "swan", "toad", "yak",
]  # fmt: skip


@pytest.mark.timeout(150)
def test_model_server_killed_mid_stream_then_restarted_on_the_same_port(e2e: E2E, api: Api) -> None:
    session = api.create_session()
    port = e2e.model.port

    def kill_after_a_few_deltas(event: str, _data: dict[str, Any], turn: Turn) -> None:
        if event == "content_delta" and turn.deltas() == 3:
            e2e.model.kill()

    try:
        broken = api.turn(session["id"], "Write a long story about a lighthouse keeper.", kill_after_a_few_deltas)
        assert broken.status == 200, broken.body
        assert broken.deltas() >= 3
        assert broken.types[-2:] == ["error", "done"], broken.types
        assert broken.first("error")["code"] in ("upstream_stream", "upstream_unavailable")

        # While it is down, parley stays up and a new turn fails fast and cleanly.
        assert httpx2.get(f"{e2e.parley.url}/healthz", timeout=5).status_code == 200
        started = time.monotonic()
        down = api.turn(session["id"], "Are you there?" + SHORT)
        assert down.types[-2:] == ["error", "done"], down.types
        assert down.first("error")["code"] == "upstream_unavailable"
        print(f"\nturn with the model server down failed in {time.monotonic() - started:.2f} s")
    finally:
        e2e.model.start()  # same port, same key: parley needs no reconfiguration
    assert e2e.model.port == port

    after = api.turn(session["id"], "Name a colour." + SHORT)
    assert_completed(after)


@pytest.mark.timeout(150)
def test_parley_restart_keeps_sessions_and_history(e2e: E2E, api: Api) -> None:
    session = api.create_session()
    first_prompt = "Remember the word pineapple." + SHORT
    first = api.turn(session["id"], first_prompt)
    assert_completed(first)
    before = api.get_session(session["id"])

    e2e.parley.restart()

    with contextlib.closing(e2e.api()) as fresh:  # the old client's connections died with parley
        after = fresh.get_session(session["id"])
        assert [(m["id"], m["role"], m["content"]) for m in after["messages"]] == [
            (m["id"], m["role"], m["content"]) for m in before["messages"]
        ]
        assert after["session"]["status"] == "active"

        second_prompt = "Which word did I ask you to remember?" + SHORT
        second = fresh.turn(session["id"], second_prompt)
        assert_completed(second)
        assert dialogue(request_for(e2e, second_prompt))[:2] == [
            ("user", first_prompt),
            ("assistant", first.text.strip()),
        ]
        assert len(fresh.get_session(session["id"])["messages"]) == 4


def test_the_local_model_servers_tokenizer_sets_the_ratio_and_costs_a_round_trip(e2e: E2E) -> None:
    """llama-cpp-python's server counts tokens (`/extras/tokenize/count`): parley starts its
    sessions from the ratio it gives on a chat-like sample. One count of a window's worth of
    history is timed, for the record: why it is asked once at start-up, not before every turn."""

    async def counts() -> tuple[int | None, int | None, float]:
        provider = OpenAICompatibleProvider(base_url=e2e.model.base_url, api_key=e2e.model.api_key)
        try:
            sample = await provider.count_tokens(e2e.model.model, context.SAMPLE)
            history = "Tell me a long story about a lighthouse keeper and the sea. " * 120  # ~1,500 tokens
            started = time.perf_counter()
            counted = await provider.count_tokens(e2e.model.model, history)
            return sample, counted, time.perf_counter() - started
        finally:
            await provider.aclose()

    sample, counted, seconds = asyncio.run(counts())
    assert sample is not None
    assert counted is not None
    assert 1000 < counted < 2048
    logged = float(e2e.parley.log_path.read_text().split("tokens per character: ")[1].split(" ")[0])
    assert logged == round(sample / len(context.SAMPLE) * context.MARGIN, 3)
    print(f"\ncounting {counted} tokens took {seconds * 1000:.1f} ms")
