"""Fitting a history to a model's window (chat/context.py) and what servers say of their window
(providers/context.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.chat.context import (
    PER_MESSAGE,
    SAFETY,
    Plan,
    conversation_of,
    estimate,
    fit,
    fit_rows,
    summary_request,
    with_summary,
)
from parley.errors import MessageTooLongForModelError
from parley.providers.base import ToolCallPart, ToolResultPart
from parley.providers.context import (
    count_from_llama_cpp,
    count_from_llama_cpp_python,
    count_from_vllm,
    stated_window,
    window_from_models,
    window_from_ollama,
    window_from_props,
)

ANSWER = "x" * 300  # 100 tokens at 1/3


def rows(exchanges: int, answer: str = ANSWER) -> list[tuple[str, str | None, Any]]:
    out: list[tuple[str, str | None, Any]] = []
    for i in range(exchanges):
        out += [("user", f"question {i:02}", None), ("assistant", answer, None)]
    return out


def test_the_whole_history_goes_when_it_fits_and_the_reply_cap_is_kept() -> None:
    fitted, grouped = fit_rows(rows(3), Plan(window=4096, tokens_per_char=1 / 3), fixed_chars=100, max_tokens=512)
    assert (len(fitted.history), fitted.dropped_rows, fitted.max_tokens) == (6, 0, 512)
    assert grouped is None  # counted, never grouped


def test_the_oldest_whole_exchanges_are_dropped_and_the_reply_still_fits() -> None:
    fitted, _ = fit_rows(rows(10), Plan(window=1000, tokens_per_char=1 / 3), fixed_chars=100, max_tokens=200)
    assert fitted.dropped_rows % 2 == 0
    assert fitted.dropped_rows > 0
    assert fitted.history[0].plain_text == f"question {fitted.dropped_rows // 2:02}"  # starts at a question
    assert fitted.history[-1].plain_text == ANSWER
    sent = sum(len(m.sent_text) for m in fitted.history)
    prompt = estimate(100 + sent, len(fitted.history) + 2, 1 / 3)
    assert fitted.max_tokens is not None
    assert prompt + fitted.max_tokens + SAFETY <= 1000
    assert fitted.max_tokens >= 200  # the reply keeps its room


def test_a_reply_cap_above_what_is_left_is_lowered() -> None:
    fitted, _ = fit_rows(rows(1), Plan(window=1000, tokens_per_char=1 / 3), fixed_chars=100, max_tokens=4096)
    assert fitted.max_tokens is not None
    assert fitted.max_tokens < 1000
    assert fitted.dropped_rows == 0


def test_a_message_that_cannot_fit_alone_is_refused() -> None:
    with pytest.raises(MessageTooLongForModelError) as refused:
        fit_rows(rows(2), Plan(window=1000, tokens_per_char=1 / 3), fixed_chars=3000, max_tokens=200)
    assert refused.value.status_code == 413
    assert refused.value.code == "message_too_long_for_model"


def test_an_unknown_window_sends_everything() -> None:
    fitted, _ = fit_rows(rows(50), Plan(window=None, tokens_per_char=1 / 3), fixed_chars=100, max_tokens=200)
    assert (len(fitted.history), fitted.dropped_rows, fitted.max_tokens) == (100, 0, 200)


def test_blocks_keep_the_first_kept_exchange_in_place_as_the_conversation_grows() -> None:
    starts = []
    for length in range(10, 40):
        fitted, _ = fit_rows(
            rows(length), Plan(window=2000, tokens_per_char=1 / 3, block=8), fixed_chars=100, max_tokens=200
        )
        assert (fitted.dropped_rows // 2) % 8 == 0
        starts.append(fitted.dropped_rows)
    assert len(set(starts)) <= 5  # the drop point moves in steps of eight exchanges, not every turn


def test_a_tool_call_stays_with_its_results() -> None:
    parts = [
        {"type": "tool_call", "toolUseId": "c1", "toolName": "t__x", "input": {}},
        {"type": "tool_result", "toolUseId": "c1", "toolName": "t__x", "output": "y" * 600},
        {"type": "text", "text": "done"},
    ]
    stored = [*rows(4), ("user", "use the tool", None), ("assistant", "done", parts), *rows(2)]
    for window in range(700, 2000, 50):
        try:
            fitted, _ = fit_rows(stored, Plan(window=window, tokens_per_char=1 / 3), fixed_chars=100, max_tokens=100)
        except MessageTooLongForModelError:
            continue
        calls = {p.call_id for m in fitted.history for p in m.parts if isinstance(p, ToolCallPart)}
        results = {p.call_id for m in fitted.history for p in m.parts if isinstance(p, ToolResultPart)}
        assert calls == results


def test_a_stored_summary_stands_for_the_messages_it_covers() -> None:
    stored = rows(12)
    summarized = ("assistant", ANSWER, [{"type": "summary", "text": "They asked twelve questions.", "covers": 8}])
    stored[9] = summarized
    conversation = conversation_of(stored)
    assert conversation.summary is not None
    assert conversation.summary.covers == 8
    fitted = fit(
        conversation, Plan(window=4000, tokens_per_char=1 / 3, strategy="summarize"), fixed_chars=100, max_tokens=200
    )
    assert fitted.summary == conversation.summary
    assert fitted.dropped_rows == 8
    assert fitted.history[0].plain_text == "question 04"
    assert fitted.to_summarize == []  # the summary covers what is dropped
    tighter = fit(
        conversation, Plan(window=800, tokens_per_char=1 / 3, strategy="summarize"), fixed_chars=100, max_tokens=200
    )
    assert tighter.dropped_rows > 8
    assert tighter.to_summarize[0].plain_text == "question 04"  # what is dropped beyond it, to extend it


def test_the_summary_goes_with_the_system_prompt_and_asks_for_an_extension() -> None:
    assert with_summary("Be brief.", None) == "Be brief."
    assert with_summary("Be brief.", "They met.").endswith("They met.")
    request = summary_request("They met.", conversation_of(rows(1)).messages)
    assert request[0].role == "system"
    assert "Summary so far:\nThey met." in request[1].plain_text
    assert "user: question 00" in request[1].plain_text


@given(st.lists(st.integers(1, 2000), min_size=1, max_size=30), st.integers(600, 20_000))
def test_whatever_the_lengths_the_prompt_and_reply_fit_the_window(lengths: list[int], window: int) -> None:
    stored: list[tuple[str, str | None, Any]] = []
    for i, length in enumerate(lengths):
        stored += [("user", f"q{i}", None), ("assistant", "a" * length, None)]
    try:
        fitted, _ = fit_rows(stored, Plan(window=window, tokens_per_char=0.3), fixed_chars=200, max_tokens=256)
    except MessageTooLongForModelError:
        return
    prompt = estimate(200 + sum(len(m.sent_text) for m in fitted.history), len(fitted.history) + 2, 0.3)
    assert fitted.max_tokens is not None
    assert prompt + fitted.max_tokens <= window
    assert fitted.dropped_rows % 2 == 0
    assert estimate(0, 1, 0.3) == PER_MESSAGE


def test_what_servers_say_of_their_window() -> None:
    models = {"data": [{"id": "other", "max_model_len": 4096}, {"id": "m", "max_model_len": 32768}]}
    assert window_from_models(models, "m") == 32768
    assert window_from_models({"data": [{"id": "x", "max_model_len": 8192}]}, "m") == 8192  # the only one
    assert window_from_models({"data": [{"id": "x"}]}, "m") is None
    assert window_from_props({"default_generation_settings": {"n_ctx": 4096}}) == 4096
    assert window_from_props({"n_ctx": 2048}) == 2048
    assert window_from_ollama({"model_info": {"llama.context_length": 131072}, "parameters": "num_ctx 8192"}) == 8192
    assert window_from_ollama({"model_info": {"qwen2.context_length": 32768}}) == 2048  # its default num_ctx
    assert window_from_ollama({"parameters": "stop x"}) is None
    assert window_from_ollama("nonsense") is None


def test_what_tokenizers_count() -> None:
    assert count_from_vllm({"count": 3, "max_model_len": 4096, "tokens": [1, 2, 3]}) == 3
    assert count_from_vllm({"tokens": [1, 2, 3]}) is None  # llama.cpp's answer to the same route
    assert count_from_llama_cpp({"tokens": [1, 2, 3]}) == 3
    assert count_from_llama_cpp({"tokens": []}) is None  # asked without `content`: nothing counted
    assert count_from_llama_cpp_python({"count": 7}) == 7
    assert count_from_llama_cpp_python({"detail": "Not Found"}) is None
    assert count_from_llama_cpp_python([1, 2]) is None


@pytest.mark.parametrize(
    ("body", "window"),
    [
        (
            {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 3031"}},
            2048,
        ),
        (
            {
                "error": {
                    "message": "request (5000 tokens) exceeds the available context size (4096 tokens)",
                    "n_ctx": 4096,
                }
            },
            4096,
        ),
        ({"error": {"message": "request (5000 tokens) exceeds the available context size (4096 tokens), try"}}, 4096),
        ({"error": {"message": "prompt is too long"}}, None),
        ("Input length (9000) exceeds model's maximum context length (8192).", 8192),
        (None, None),
    ],
)
def test_the_window_an_overflow_error_states(body: object, window: int | None) -> None:
    assert stated_window(body) == window
