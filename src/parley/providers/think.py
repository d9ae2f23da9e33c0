"""Incremental splitter for reasoning written inline as `<think>…</think>` in the answer text.

Servers run without a reasoning parser leave the model's thoughts in `content`. Feed the content
pieces in order; each call returns `(answer, reasoning)` for what can be decided so far. Tags may
be split across pieces, so a possible partial tag is held back until the next piece (or
`finish()`) settles it.

Only a reply that *opens* with `<think>` (after optional whitespace) is split; text outside the
tags is answer. Some chat templates pre-open the tag in the prompt, so the reply holds only
`…</think>`; that case is opt-in (`assume_open=True`) because guessing it wrongly would hide a
whole answer as reasoning.

Imports: standard library only.
"""

from __future__ import annotations

__all__ = ["ThinkSplitter"]

_OPEN = "<think>"
_CLOSE = "</think>"

# States
_START = 0  # nothing but whitespace seen yet: the reply may still open with <think>
_THINK = 1  # inside the reasoning block
_AFTER = 2  # just closed the block: drop the whitespace separating it from the answer
_ANSWER = 3  # everything else is answer, passed through untouched


def _held_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """Splits one reply's content stream into answer and reasoning pieces."""

    __slots__ = ("_assume_open", "_pending", "_state")

    def __init__(self, *, assume_open: bool = False) -> None:
        self._assume_open = assume_open
        self._state = _START
        self._pending = ""

    @property
    def passthrough(self) -> bool:
        """True once every further piece is plain answer (callers may skip the splitter)."""
        return self._state == _ANSWER

    def feed(self, text: str) -> tuple[str, str]:
        """Returns (answer, reasoning) decided by this piece; either may be empty."""
        state = self._state
        if state == _ANSWER:
            return text, ""
        if state == _START:
            return self._feed_start(text)
        if state == _THINK:
            return self._feed_think(text)
        return self._feed_after(text)

    def finish(self) -> tuple[str, str]:
        """End of the reply: release whatever was held back."""
        pending, self._pending = self._pending, ""
        state, self._state = self._state, _ANSWER
        if state == _THINK:
            return "", pending
        if state == _START and self._assume_open and pending.strip():
            return "", pending
        return pending, ""

    def _feed_start(self, text: str) -> tuple[str, str]:
        buf = self._pending + text
        stripped = buf.lstrip()
        if stripped.startswith(_OPEN):
            self._pending = ""
            self._state = _THINK
            return self._feed_think(stripped[len(_OPEN) :])
        if not stripped or _OPEN.startswith(stripped):
            self._pending = buf  # still undecided
            return "", ""
        self._pending = ""
        if self._assume_open:
            self._state = _THINK
            return self._feed_think(buf)
        self._state = _ANSWER
        return buf, ""

    def _feed_think(self, text: str) -> tuple[str, str]:
        buf = self._pending + text if self._pending else text
        end = buf.find(_CLOSE)
        if end >= 0:
            self._pending = ""
            self._state = _AFTER
            answer, _ = self._feed_after(buf[end + len(_CLOSE) :])
            return answer, buf[:end]
        held = _held_suffix(buf, _CLOSE) if "<" in buf[-len(_CLOSE) :] else 0
        if held:
            self._pending = buf[-held:]
            return "", buf[:-held]
        self._pending = ""
        return "", buf

    def _feed_after(self, text: str) -> tuple[str, str]:
        answer = text.lstrip()
        if answer:
            self._state = _ANSWER
        return answer, ""
