"""The chat page in Chromium against a real parley: sign in, stream, Stop, reload, keyboard, chats, screenshots."""

from __future__ import annotations

import re
from collections.abc import Callable

from parley.providers.base import Usage
from tests.conftest import Tenants, client
from tests.support.live_server import LiveServer
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.sse_client import read_stream
from tests.support.tcp_proxy import TcpProxy
from tests.web.conftest import ARTIFACTS, DESKTOP, PHONE, ChatPage, WebServerFactory

OpenPage = Callable[..., ChatPage]


def words(count: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i:02d} " for i in range(count)]


def test_sign_in_send_and_watch_the_reply_stream(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    tokens = words(12)
    provider = ScriptedProvider(Reply(tokens=tokens, reasoning=["First, ", "think."], delay=0.06))
    server = web_server(provider)
    chat = open_page(server)
    assert chat.page.locator("#sign-in").is_visible()
    assert chat.page.locator("#workspace").is_hidden()

    chat.sign_in(tenants.a1)
    assert chat.storage("parley.token") == tenants.a1
    assert tenants.a1 not in chat.page.url

    chat.record_assistant_text()
    chat.send("Count for me please")
    # While the turn runs the send box is disabled and Stop is offered.
    chat.stop_button.wait_for(state="visible")
    assert chat.composer.is_disabled()
    chat.wait_for_turn_end()

    final = "".join(tokens).strip()
    assert chat.assistant.inner_text() == final
    seen = [text for text in chat.seen_texts() if text]
    growing = [text for text in seen if text != final]
    assert len(growing) >= 3, f"the reply did not stream in: {seen}"
    for text in seen:
        assert final.startswith(text.rstrip()), f"{text!r} is not a prefix of the reply"

    # The reasoning is there, collapsed and dimmed; the turn's tokens and cost come from message_end.
    reasoning = chat.page.locator("article.message.assistant details.reasoning")
    assert reasoning.get_attribute("open") is None
    assert reasoning.locator(".reasoning-text").text_content() == "First, think."
    assert chat.page.locator("article.message.assistant .meta").inner_text() == ("10 in · 3 out tokens · $0.000075")
    # The title came from title_updated; the session is listed; the usage line counts the turn.
    assert chat.page.locator("#chat-title").inner_text() == "Count for me please"
    chat.expect_titles(["Count for me please"])
    chat.page.wait_for_function("() => document.querySelector('#usage').textContent.includes('$0.000075')")
    assert "1 message" in chat.page.locator("#usage").inner_text()
    assert chat.composer.is_enabled()
    assert chat.stop_button.is_hidden()
    assert chat.saved_turn() is None

    # Signing out forgets the token and shows the sign-in form again.
    chat.page.get_by_role("button", name="Sign out").click()
    assert chat.page.locator("#sign-in").is_visible()
    assert chat.storage("parley.token") is None
    chat.page.reload()
    assert chat.page.locator("#sign-in").is_visible()


def test_a_rejected_token_is_explained(web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage) -> None:
    server = web_server(ScriptedProvider())
    chat = open_page(server)
    chat.page.get_by_label("API token").fill(tenants.a1_revoked)
    chat.page.get_by_role("button", name="Sign in").click()
    error = chat.page.locator("#sign-in-error")
    error.wait_for(state="visible")
    chat.page.wait_for_function("() => document.querySelector('#sign-in-error').textContent.includes('unauthorized')")
    assert chat.page.locator("#workspace").is_hidden()
    assert chat.storage("parley.token") is None


def test_stop_mid_reply_keeps_the_partial_text(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    tokens = words(60)
    provider = ScriptedProvider(Reply(tokens=tokens, delay=0.1))
    server = web_server(provider)
    chat = open_page(server).sign_in(tenants.a1)
    chat.send("Go on for a while")
    chat.page.wait_for_function(
        "() => (document.querySelector('article.message.assistant .content')?.textContent || '').includes('w04')"
    )
    chat.stop_button.click()
    chat.wait_for_turn_end()

    shown = chat.assistant.inner_text()
    full = "".join(tokens).strip()
    assert shown.startswith("w00 w01 w02 w03 w04")
    assert full.startswith(shown)
    assert len(shown) < len(full)
    assert chat.page.locator("article.message.assistant .status").inner_text() == "Stopped"
    assert chat.composer.is_enabled()
    assert chat.page.evaluate("() => document.activeElement.id") == "composer-input"
    assert chat.banner.is_hidden()

    # What the page shows is exactly what the server stored for the stopped reply.
    sid = chat.storage("parley.session")
    with client(chat.server, tenants.a1) as api:
        messages = api.get(f"/api/v1/ai/sessions/{sid}").json()["messages"]
    assert messages[-1]["finishReason"] == "interrupted"
    assert messages[-1]["content"].strip() == shown


def test_reload_mid_reply_resumes_to_the_end(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    tokens = words(40)  # ~2.4 s: time enough to reload mid-reply even on a busy machine
    provider = ScriptedProvider(Reply(tokens=tokens, delay=0.06))
    server = web_server(provider)
    chat = open_page(server).sign_in(tenants.a1)
    resumed: list[dict[str, str]] = []
    chat.page.on(
        "request", lambda request: resumed.append(request.headers) if request.url.endswith("/events") else None
    )
    chat.send("Tell me a long story")
    chat.page.wait_for_function(
        "() => (document.querySelector('article.message.assistant .content')?.textContent || '').includes('w06')"
    )
    saved = chat.saved_turn()
    assert saved is not None
    assert re.fullmatch(r"\d+-\d+", saved["lastEventId"])
    assert [part["type"] for part in saved["parts"]] == ["text"]
    assert saved["parts"][0]["text"].startswith("w00 w01")

    chat.page.reload()
    chat.page.locator("#workspace").wait_for(state="visible")
    chat.wait_for_turn_end()

    full = "".join(tokens).strip()
    assert chat.assistant.inner_text() == full, "text was lost or repeated across the reload"
    assert chat.page.locator("article.message.assistant").count() == 1
    assert chat.page.locator("article.message.user .content").all_inner_texts() == ["Tell me a long story"]
    assert chat.page.locator("article.message.assistant .meta").inner_text().startswith("10 in · 3 out tokens")
    assert len(resumed) == 1
    last_event_id = resumed[0].get("last-event-id", "")
    assert re.fullmatch(r"\d+-\d+", last_event_id), resumed[0]
    assert "authorization" in resumed[0]
    assert chat.saved_turn() is None
    assert provider.opened == 1, "the reload must re-attach, not send the message again"

    # Reloading again shows the stored reply once.
    chat.page.reload()
    chat.page.locator("article.message.assistant").wait_for()
    assert chat.assistant.inner_text() == full
    assert chat.page.locator("article.message.assistant").count() == 1


def test_a_dropped_connection_reattaches_and_the_reply_goes_on(
    web_server: WebServerFactory,
    tenants: Tenants,
    open_page: OpenPage,
    dropping_proxy: Callable[[LiveServer], TcpProxy],
) -> None:
    tokens = words(30)
    provider = ScriptedProvider(Reply(tokens=tokens, delay=0.05))
    server = web_server(provider)
    proxy = dropping_proxy(server)
    chat = open_page(server, base_url=proxy.url).sign_in(tenants.a1)
    resumed: list[dict[str, str]] = []
    chat.page.on(
        "request", lambda request: resumed.append(request.headers) if request.url.endswith("/events") else None
    )
    chat.send("Stream through a bad network")
    chat.page.wait_for_function(
        "() => (document.querySelector('article.message.assistant .content')?.textContent || '').includes('w04')"
    )
    assert proxy.cut() > 0
    chat.wait_for_turn_end()

    assert chat.assistant.inner_text() == "".join(tokens).strip()
    assert chat.banner.is_hidden()
    assert len(resumed) >= 1
    assert re.fullmatch(r"\d+-\d+", resumed[0].get("last-event-id", "")), resumed[0]
    assert provider.opened == 1


def test_keyboard_only_sending_and_stopping(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    provider = ScriptedProvider(Reply(tokens=["Keyboard", " works", "."]))
    provider.enqueue(Reply(tokens=["Hello"]), Reply(tokens=words(80), delay=0.1))
    server = web_server(provider)
    chat = open_page(server)
    keyboard = chat.page.keyboard

    def active() -> str:
        focused: str = chat.page.evaluate("() => document.activeElement?.id || ''")
        return focused

    # Sign in: Tab to the token field, type, Enter.
    for _ in range(10):
        if active() == "token-input":
            break
        keyboard.press("Tab")
    assert active() == "token-input"
    keyboard.type(tenants.a1)
    keyboard.press("Enter")
    chat.page.locator("#workspace").wait_for(state="visible")
    chat.page.wait_for_function("() => document.activeElement?.id === 'composer-input'")

    # Shift+Enter is a new line, Enter sends.
    keyboard.type("first line")
    keyboard.press("Shift+Enter")
    keyboard.type("second line")
    assert chat.composer.input_value() == "first line\nsecond line"
    keyboard.press("Enter")
    chat.wait_for_turn_end()
    assert chat.page.locator("article.message.user .content").inner_text() == "first line\nsecond line"
    assert chat.assistant.inner_text() == "Hello"
    assert active() == "composer-input", "focus goes back to the message box after a reply"

    # Every control is reachable with Tab, and the focused one is visibly marked.
    visited: list[str] = []
    for _ in range(25):
        keyboard.press("Tab")
        name = chat.page.evaluate(
            """() => {
                const el = document.activeElement;
                if (!el || el === document.body) return '';  // focus left the page for the browser's own UI
                const label = el.labels && el.labels.length ? el.labels[0].textContent : '';
                return (el.getAttribute('aria-label') || label || el.textContent || el.id).trim();
            }"""
        )
        if not name:
            continue
        outline = chat.page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", f"no visible focus on {name!r}"
        visited.append(name)
        if name == "Message":
            break
    for expected in ("Sign out", "New chat", "Search chats", "Rename", "Close chat", "Message"):
        assert any(v.startswith(expected) for v in visited), f"{expected!r} not reachable: {visited}"
    keyboard.press("Tab")
    assert chat.page.evaluate("() => document.activeElement.textContent") == "Send"
    keyboard.press("Shift+Tab")
    assert active() == "composer-input"

    # A long reply, stopped with Esc.
    keyboard.type("now a long one")
    keyboard.press("Enter")
    chat.page.wait_for_function(
        "() => (document.querySelector('article.message.assistant:last-of-type .content')?.textContent || '')"
        ".includes('w03')"
    )
    assert active() == "stop", "focus moves to Stop while the reply runs"
    keyboard.press("Escape")
    chat.wait_for_turn_end()
    assert chat.page.locator("article.message.assistant .status").last.inner_text() == "Stopped"
    assert active() == "composer-input"


def _seed_chat(server: LiveServer, token: str, content: str) -> str:
    with client(server, token) as api:
        sid: str = api.post("/api/v1/ai/sessions", json={}).json()["id"]
        with api.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": content}) as response:
            assert read_stream(response).types[-1] == "done"
    return sid


def test_chat_list_search_rename_close_and_new_chat(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    server = web_server(ScriptedProvider(Reply(tokens=["Sure", "."])))
    banana = _seed_chat(server, tenants.a1, "How do I bake banana bread?\nMine are overripe.")
    _seed_chat(server, tenants.a1, "Explain income tax")
    _seed_chat(server, tenants.a2, "Someone else's banana")  # another user's chat stays invisible

    chat = open_page(server).sign_in(tenants.a1)
    chat.expect_titles(["Explain income tax", "How do I bake banana bread?"])

    # Search goes through the search route and shows where the words matched.
    chat.page.get_by_label("Search chats").fill("overripe")
    chat.page.wait_for_function("() => document.querySelector('#search-status').textContent.includes('1 chat')")
    chat.expect_titles(["How do I bake banana bread?"])
    assert "Mine are overripe." in chat.page.locator("#session-list .session-detail").inner_text()
    chat.page.locator("#session-list .session-item").click()
    chat.page.locator("article.message.assistant").wait_for()
    assert chat.page.locator("#chat-title").inner_text() == "How do I bake banana bread?"
    assert chat.page.locator("article.message .content").all_inner_texts() == [
        "How do I bake banana bread?\nMine are overripe.",
        "Sure.",
    ]
    assert chat.storage("parley.session") == banana
    chat.page.get_by_label("Search chats").press("Escape")
    chat.page.wait_for_function("() => document.querySelectorAll('#session-list .session-title').length === 2")

    # Rename.
    chat.page.get_by_role("button", name="Rename").click()
    chat.page.get_by_label("New title").fill("Baking")
    chat.page.get_by_label("New title").press("Enter")
    chat.page.wait_for_function("() => document.querySelector('#chat-title').textContent === 'Baking'")
    chat.expect_titles(["Explain income tax", "Baking"])  # renaming is not activity: the order stays

    # Close (asks for a second press), then the chat is read-only.
    close = chat.page.locator("#close-chat")
    close.click()
    assert close.inner_text() == "Press again to close"
    close.click()
    chat.page.wait_for_function("() => document.querySelector('#composer-input').disabled")
    assert "closed" in chat.page.locator("#composer-hint").inner_text()
    assert "closed" in chat.page.locator("#session-list [aria-current=true] .session-detail").inner_text()
    with client(server, tenants.a1) as api:
        detail = api.get(f"/api/v1/ai/sessions/{banana}").json()["session"]
    assert detail["title"] == "Baking"
    assert detail["status"] == "closed"

    # New chat: an empty conversation, created on the first message.
    chat.page.get_by_role("button", name="New chat").click()
    assert chat.page.locator("#chat-title").inner_text() == "New chat"
    assert chat.page.locator("article.message").count() == 0
    assert chat.composer.is_enabled()
    chat.send("A fresh start")
    chat.wait_for_turn_end()
    chat.expect_titles(["A fresh start", "Explain income tax", "Baking"])


MARKDOWN_REPLY = [
    "## Banana bread\n\n",
    "You need **three ripe bananas**, *a little patience* and an oven at `180 °C`.\n\n",
    "1. Mash the bananas\n2. Mix in the dry ingredients\n   - flour\n   - a pinch of salt\n3. Bake for 60 minutes\n\n",
    "```python\ndef done(minutes: int) -> bool:\n    return minutes >= 60\n```\n\n",
    "| Step | Minutes |\n|------|--------:|\n| Mix | 10 |\n| Bake | 60 |\n\n",
    "> Tip: let it cool before slicing. More at https://example.com/banana-bread.\n",
]


def test_screenshots_of_a_finished_conversation(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    provider = ScriptedProvider()
    provider.enqueue(
        Reply(tokens=["Happy to help.", " What would you like to bake?"]),
        Reply(
            tokens=MARKDOWN_REPLY,
            reasoning=["The user wants a recipe; ", "keep it short."],
            usage=Usage(input_tokens=412, output_tokens=168),
        ),
    )
    server = web_server(provider)
    chat = open_page(server).sign_in(tenants.a1)
    chat.send("Can you help me bake something?")
    chat.wait_for_turn_end()
    chat.send("Banana bread, please")
    chat.wait_for_turn_end()
    assert chat.page.locator("article.message.assistant .content h4").inner_text() == "Banana bread"
    assert chat.page.locator("article.message.assistant .content table td").count() == 4

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {
        "conversation-desktop.png": (DESKTOP, "light"),
        "conversation-desktop-dark.png": (DESKTOP, "dark"),
        "conversation-phone.png": (PHONE, "light"),
    }
    backgrounds: dict[str, str] = {}
    for name, (viewport, scheme) in shots.items():
        chat.page.set_viewport_size(viewport)
        chat.page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
        chat.page.evaluate("() => document.activeElement.blur()")
        path = ARTIFACTS / name
        chat.page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000, name
        backgrounds[scheme] = chat.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        # Nothing is wider than the screen: no sideways scrolling of the page at 360 px.
        assert chat.page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"], name
    assert backgrounds["light"] != backgrounds["dark"], "prefers-color-scheme is not followed"

    # On a phone the chat list sits behind a labelled toggle.
    toggle = chat.page.get_by_role("button", name="Chats")
    assert toggle.get_attribute("aria-expanded") == "false"
    assert chat.page.locator("#sidebar").is_hidden()
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    assert chat.page.locator("#sidebar").is_visible()
    chat.page.locator("#session-list .session-item").first.click()
    chat.page.locator("#sidebar").wait_for(state="hidden")
    assert toggle.get_attribute("aria-expanded") == "false"
