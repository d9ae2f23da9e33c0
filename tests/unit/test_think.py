"""The inline `<think>` splitter: tags split anywhere, answer vs reasoning never mixed up."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.providers.think import ThinkSplitter


def split(*pieces: str, assume_open: bool = False) -> tuple[str, str]:
    splitter = ThinkSplitter(assume_open=assume_open)
    answer, reasoning = "", ""
    for piece in pieces:
        a, r = splitter.feed(piece)
        answer += a
        reasoning += r
    a, r = splitter.finish()
    return answer + a, reasoning + r


def every_split(text: str, assume_open: bool = False) -> set[tuple[str, str]]:
    return {split(text[:i], text[i:], assume_open=assume_open) for i in range(len(text) + 1)}


def test_plain_text_passes_through_untouched() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Hello") == ("Hello", "")
    assert splitter.passthrough
    assert splitter.feed(" <think>not a tag here</think>") == (" <think>not a tag here</think>", "")


def test_reasoning_block_at_start() -> None:
    assert split("<think>Let me see.</think>\n\nThe answer.") == ("The answer.", "Let me see.")


def test_leading_whitespace_before_the_tag_is_allowed() -> None:
    assert split("\n  <think>r</think>a") == ("a", "r")


def test_tags_split_at_every_offset() -> None:
    text = " <think>Step 1 < 2. </thin k? </think>\n\nAnswer <i>x</i>"
    assert every_split(text) == {("Answer <i>x</i>", "Step 1 < 2. </thin k? ")}


def test_tag_not_at_start_is_answer() -> None:
    assert every_split("Sure. <think>x</think>") == {("Sure. <think>x</think>", "")}


def test_prefix_of_the_tag_that_turns_out_not_to_be_one() -> None:
    assert split("<thi", "s is fine") == ("<this is fine", "")
    assert split("<", "b>bold</b>") == ("<b>bold</b>", "")


def test_unclosed_block_is_reasoning_at_finish() -> None:
    assert split("<think>still thinking </th") == ("", "still thinking </th")


def test_reply_that_is_only_a_partial_tag_or_whitespace_is_answer() -> None:
    assert split("<thi") == ("<thi", "")
    assert split("  ") == ("  ", "")
    assert split("") == ("", "")


def test_whitespace_between_block_and_answer_is_dropped_across_pieces() -> None:
    assert split("<think>r</think>", "\n", "\n", "Answer") == ("Answer", "r")


def test_empty_reasoning_block() -> None:
    assert split("<think></think>Hi") == ("Hi", "")


def test_pieces_are_released_as_soon_as_they_are_decided() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>abc") == ("", "abc")
    assert splitter.feed("de</") == ("", "de")  # "</" may start the closing tag: held back
    assert splitter.feed("x") == ("", "</x")
    assert splitter.feed("</think>ok") == ("ok", "")


def test_assume_open_treats_text_before_the_close_tag_as_reasoning() -> None:
    assert every_split("reasoning here</think>\n\nanswer", assume_open=True) == {("answer", "reasoning here")}


def test_assume_open_still_accepts_an_explicit_opening_tag() -> None:
    assert every_split("<think>r</think>a", assume_open=True) == {("a", "r")}


def test_assume_open_without_close_is_all_reasoning() -> None:
    assert split("no close tag", assume_open=True) == ("", "no close tag")


_piece = st.text(alphabet="<>/thinkab \n", max_size=6)


@settings(max_examples=300, deadline=None)
@given(reasoning=_piece, answer=_piece, cuts=st.lists(st.integers(0, 200), max_size=8))
def test_property_any_split_matches_a_whole_feed(reasoning: str, answer: str, cuts: list[int]) -> None:
    while "</think>" in reasoning:
        reasoning = reasoning.replace("</think>", "")
    text = "<think>" + reasoning + "</think>" + answer
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert split(*pieces) == split(text)
    assert split(text) == (answer.lstrip(), reasoning)
