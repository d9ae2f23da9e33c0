"""A conversation longer than the model's context window: the page marks where the model's view of
it begins, above the oldest message the model is still sent, as the turn that cut it streams
(`context_trimmed`) and after a reload (the reply's stored parts); with the summarize strategy it
says that a summary stands for the messages above, and shows that summary once it is stored."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from parley.providers.base import ChatMessage, ContextWindow
from tests.conftest import Tenants
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.web.conftest import ChatPage, WebServerFactory

OpenPage = Callable[..., ChatPage]

STORY = [f"Once upon a time number {i} there was a long story. " for i in range(12)]  # ~600 characters
# With this window (and replies of at most 200 tokens) the fifth turn is the first whose history no
# longer fits: two messages are dropped, then more.
WINDOW = 700
FITS_WHOLE = 4  # turns sent whole
SLOW = Reply(tokens=STORY, delay=0.25)  # the turn that cuts: slow enough to look at while it streams

MARKER = """() => {
    const cuts = [...document.querySelectorAll('#messages .context-cut')];
    const messages = [...document.querySelectorAll('#messages > .message')];
    if (cuts.length !== 1) return { count: cuts.length };
    const cut = cuts[0];
    const above = messages.filter((m) => m.compareDocumentPosition(cut) & Node.DOCUMENT_POSITION_FOLLOWING);
    const next = messages[above.length];
    return {
        count: 1,
        above: above.length,
        next: next ? next.querySelector('.content').textContent : null,
        separator: cut.querySelector('[role=separator]').getAttribute('aria-label'),
        html: cut.innerHTML,
    };
}"""


def _ask(n: int) -> str:
    return f"Tell me story {n}, a long one please."


def _provider(*replies: Any) -> ScriptedProvider:
    provider = ScriptedProvider(default=Reply(tokens=STORY))
    provider.window = ContextWindow(tokens=WINDOW, source="test")
    provider.enqueue(*replies)
    return provider


def _turn(chat: ChatPage, n: int) -> None:
    chat.send(_ask(n))
    chat.wait_for_turn_end()


def _first_seen(provider: ScriptedProvider) -> str:
    """The oldest stored message the model was last sent for a reply (after the system prompt)."""
    answered = [call for call in provider.calls if not call[0].plain_text.startswith("Condense")]
    return answered[-1][1].plain_text


def _where_the_view_begins(provider: ScriptedProvider) -> tuple[int, str]:
    """How many stored messages come before the oldest one the model was last sent, and that one
    (each exchange is a question and its reply)."""
    first = _first_seen(provider)
    match = re.fullmatch(r"Tell me story (\d+), a long one please\.", first)
    assert match, first
    return 2 * int(match[1]), first


def _marker(chat: ChatPage) -> dict[str, Any]:
    found: dict[str, Any] = chat.page.evaluate(MARKER)
    return found


def _cut(chat: ChatPage) -> Any:
    return chat.page.locator("#messages .context-cut")


def _summarizing(messages: list[ChatMessage]) -> Reply:
    if messages[0].plain_text.startswith("Condense this conversation"):
        earlier = "earlier " if "Summary so far" in messages[1].plain_text else ""
        return Reply(tokens=[f"SUMMARY of the {earlier}stories: <b>bold</b> <img src=x onerror=alert(1)>"])
    return Reply(tokens=STORY)


def test_the_page_marks_where_the_model_s_view_begins_live_and_after_a_reload(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    provider = _provider(*[Reply(tokens=STORY)] * FITS_WHOLE, SLOW)
    server = web_server(provider, MCP_LLM_MAX_TOKENS="200")
    chat = open_page(server).sign_in(tenants.a1)
    for n in range(FITS_WHOLE):
        _turn(chat, n)
    assert _first_seen(provider) == _ask(0)  # the model still sees everything
    expect(_cut(chat)).to_have_count(0)

    # The turn whose history no longer fits: the marker shows while it streams.
    chat.send(_ask(FITS_WHOLE))
    separator = chat.page.get_by_role("separator", name=re.compile("no longer seen by the model"))
    expect(separator).to_be_visible()
    expect(chat.page.locator("article.message.assistant.streaming")).to_have_count(1)
    chat.wait_for_turn_end()
    assert _first_seen(provider) == _ask(1)  # the first exchange was dropped
    marker = _marker(chat)
    assert marker["count"] == 1, marker
    assert (marker["above"], marker["next"]) == (2, _ask(1)), marker
    assert marker["separator"] == (
        "Earlier messages are no longer seen by the model: the 2 messages above no longer fit its context window."
    )
    expect(separator).to_have_text(marker["separator"])

    # The next turn drops more: the one marker moves down.
    _turn(chat, FITS_WHOLE + 1)
    above, first = _where_the_view_begins(provider)
    assert above > 2
    live = _marker(chat)
    assert (live["count"], live["above"], live["next"]) == (1, above, first), live

    # Read back from the server, it stands in the same place, saying the same.
    chat.page.reload()
    chat.page.locator("article.message.assistant").nth(FITS_WHOLE + 1).wait_for()
    expect(_cut(chat)).to_have_count(1)
    assert _marker(chat) == live
    assert chat.page.locator("#messages .context-cut details").count() == 0  # nothing was summarized


def test_with_the_summarize_strategy_the_page_shows_the_summary_the_model_sees(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage, tmp_path: Path
) -> None:
    provider = _provider(*[Reply(tokens=STORY)] * FITS_WHOLE, *[_summarizing] * 4)
    server = web_server(provider, MCP_LLM_MAX_TOKENS="200", PARLEY_CONTEXT_STRATEGY="summarize")
    chat = open_page(server).sign_in(tenants.a1)
    for n in range(FITS_WHOLE):
        _turn(chat, n)
    expect(_cut(chat)).to_have_count(0)

    _turn(chat, FITS_WHOLE)
    marker = _marker(chat)
    assert (marker["count"], marker["above"], marker["next"]) == (1, 2, _ask(1)), marker
    assert marker["separator"] == (
        "Earlier messages are no longer seen by the model: instead of the 2 messages above, it sees a summary of them."
    )
    _turn(chat, FITS_WHOLE + 1)
    system = provider.calls[-1][0].plain_text
    summary = "SUMMARY of the earlier stories: <b>bold</b> <img src=x onerror=alert(1)>"
    assert summary in system  # what the model is sent instead of the messages above
    above, first = _where_the_view_begins(provider)
    assert above > 2
    live = _marker(chat)
    assert (live["count"], live["above"], live["next"]) == (1, above, first), live

    # After a reload the stored summary is shown, folded, as plain text.
    chat.page.reload()
    chat.page.locator("article.message.assistant").nth(FITS_WHOLE + 1).wait_for()
    stored = _marker(chat)
    assert (stored["count"], stored["above"], stored["next"]) == (1, above, first), stored
    assert stored["separator"] == live["separator"]
    details = chat.page.locator("#messages .context-cut details")
    text = details.locator(".context-cut-summary-text")
    expect(text).to_be_hidden()
    details.get_by_text("The summary the model sees").click()
    expect(text).to_be_visible()
    expect(text).to_have_text(summary)
    chat.page.locator("#messages .context-cut").scroll_into_view_if_needed()
    chat.page.screenshot(path=str(tmp_path / "context-cut-summary.png"))
    assert chat.page.locator("#messages .context-cut img, #messages .context-cut b").count() == 0


def test_the_pages_reading_of_a_cut(web_server: WebServerFactory, open_page: OpenPage) -> None:
    chat = open_page(web_server(ScriptedProvider()))
    result = chat.page.evaluate(
        """async () => {
            const { applyReplyEvent, contextCut, replyBlocks } = await import('/static/reply.js');
            const parts = [];
            for (const [type, data] of [
                ['context_trimmed', { droppedMessages: 2, summarized: false }],
                ['context_trimmed', { droppedMessages: 4, summarized: true }],  // a refit dropped more
                ['content_delta', { delta: 'Hi.' }],
            ]) applyReplyEvent(parts, type, data);
            const summary = (text) => ({ type: 'summary', text, covers: 2 });
            const cut = (n, summarized) => ({ type: 'context_trimmed', droppedMessages: n, summarized });
            return {
                parts,
                blocks: replyBlocks(parts).map((b) => b.kind),
                live: contextCut([{ parts }]),
                stored: contextCut([
                    { parts: [cut(2, true), summary('old'), { type: 'text', text: 'a' }] },
                    { parts: [cut(4, true), summary('new'), { type: 'text', text: 'b' }] },
                    { parts: [{ type: 'text', text: 'c' }] },  // the newest reply that says so counts
                ]),
                reused: contextCut([{ parts: [cut(2, true), summary('in use')] }, { parts: [cut(2, true)] }]),
                none: [contextCut([]), contextCut([{ parts: [cut(0, false)] }]), contextCut([{ content: 'x' }])],
            };
        }"""
    )
    assert result["parts"] == [
        {"type": "context_trimmed", "droppedMessages": 4, "summarized": True},
        {"type": "text", "text": "Hi."},
    ]
    assert result["blocks"] == ["text"]  # the cut is not part of the reply's own blocks
    assert result["live"] == {"droppedMessages": 4, "summarized": True, "summary": None}
    assert result["stored"] == {"droppedMessages": 4, "summarized": True, "summary": "new"}
    assert result["reused"] == {"droppedMessages": 2, "summarized": True, "summary": "in use"}
    assert result["none"] == [None, None, None]
