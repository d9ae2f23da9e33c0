"""Every failure the page can meet is shown as a readable banner with its code, never as a silent stop."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from parley.errors import ProviderError, ProviderErrorKind
from tests.conftest import Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.sse_client import read_stream
from tests.web.conftest import ChatPage, WebServerFactory

OpenPage = Callable[..., ChatPage]


def banner_text(chat: ChatPage, code: str) -> str:
    chat.banner.wait_for(state="visible")
    chat.page.wait_for_function(
        "(code) => document.querySelector('#banner .banner-code')?.textContent === code", arg=code
    )
    text: str = chat.banner.locator("#banner-text").inner_text()
    return text


def test_a_turn_running_elsewhere_gives_a_409_banner(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    provider = ScriptedProvider()
    provider.enqueue(Reply(tokens=["Ready."]), Reply(tokens=[f"t{i} " for i in range(100)], delay=0.2))
    server = web_server(provider)
    chat = open_page(server).sign_in(tenants.a1)
    chat.send("First question")
    chat.wait_for_turn_end()
    sid = chat.storage("parley.session")

    # Another client of the same user starts a long turn on this session (and walks away from its
    # stream; the turn goes on without it).
    with (
        client(server, tenants.a1) as other,
        other.stream("POST", f"/api/v1/ai/sessions/{sid}/messages", json={"content": "from elsewhere"}) as r,
    ):
        assert read_stream(r, stop_after=2).types == ["message_start", "content_delta"]

    chat.send("Second question")
    text = banner_text(chat, "turn_in_progress")
    assert "A message is already being processed for this session." in text
    # Nothing was stored, so the text is given back and the box is usable again.
    assert chat.composer.input_value() == "Second question"
    assert chat.composer.is_enabled()
    assert chat.page.locator("article.message.user .content").all_inner_texts() == ["First question"]
    assert chat.page.locator("article.message.assistant").count() == 1

    chat.page.get_by_role("button", name="Dismiss this message").click()
    assert chat.banner.is_hidden()
    with client(server, tenants.a1) as other:
        assert other.post(f"/api/v1/ai/sessions/{sid}/interrupt").status_code == 200


def test_an_upstream_error_event_keeps_the_partial_reply_and_says_why(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    failing = Reply(
        tokens=["Partial ", "answer ", "never sent"],
        fail_after=2,
        error=ProviderError(ProviderErrorKind.OVERLOADED),
    )
    server = web_server(ScriptedProvider(failing))
    chat = open_page(server).sign_in(tenants.a1)
    chat.send("Will this work?")
    chat.wait_for_turn_end()
    text = banner_text(chat, "upstream_overloaded")
    assert "The model server is overloaded. Please try again later." in text
    assert chat.assistant.inner_text() == "Partial answer"
    assert chat.page.locator("article.message.assistant .status").inner_text() == "Failed (upstream_overloaded)"
    assert chat.composer.is_enabled()

    # After a reload the stored reply says the same.
    chat.page.reload()
    chat.page.locator("article.message.assistant").wait_for()
    assert chat.page.locator("article.message.assistant .status").inner_text() == "Failed (upstream_overloaded)"


def test_an_expired_session_gives_a_410_banner_and_a_read_only_chat(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    now = [datetime.now(UTC)]
    server = web_server(ScriptedProvider(), app_kwargs={"clock": lambda: now[0]})
    chat = open_page(server).sign_in(tenants.a1)
    chat.send("Hello")
    chat.wait_for_turn_end()

    now[0] += timedelta(hours=3)  # past the 2 h idle limit
    chat.send("Still there?")
    text = banner_text(chat, "session_expired")
    assert "expired" in text.lower()
    chat.page.wait_for_function("() => document.querySelector('#composer-input').disabled")
    assert "expired" in chat.page.locator("#composer-hint").inner_text()
    assert "expired" in chat.page.locator("#session-list [aria-current=true] .session-detail").inner_text()
    # A new chat is the way on.
    chat.page.get_by_role("button", name="New chat").click()
    assert chat.composer.is_enabled()


def test_rate_limit_budget_and_network_refusals_are_explained(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    server = web_server(ScriptedProvider(Reply(tokens=["Fine", " now."])))
    with client(server, tenants.a1) as api:
        budget = {"messagesPerMinutePerUser": 1, "monthlyBudgetCents": 500}
        assert api.put("/api/v1/ai/budget", json=budget).status_code == 200
    chat = open_page(server).sign_in(tenants.a1)
    # The budget shows as a labelled meter; the unlimited (null) daily budget shows none.
    meter = chat.page.locator("#usage meter")
    assert meter.count() == 1
    assert (meter.get_attribute("aria-label") or "").startswith("0% of the monthly budget of $5.00 used, renews ")
    assert "0% of $5.00 this month" in chat.page.locator("#usage").inner_text()

    chat.send("One")
    chat.wait_for_turn_end()
    chat.send("Two")  # the second message within a minute
    text = banner_text(chat, "rate_limited")
    assert re.search(r"Rate limit reached: .* Try again in \d+ s\. You can send again at .+\.", text), text
    assert chat.composer.input_value() == "Two"

    with client(server, tenants.a1) as api:
        budget = {"messagesPerMinutePerUser": None, "monthlyBudgetCents": 0}
        assert api.put("/api/v1/ai/budget", json=budget).status_code == 200
    chat.composer.press("Enter")
    text = banner_text(chat, "monthly_budget_exhausted")
    assert "The organization's monthly AI budget is spent." in text
    assert "In your time zone that is on " in text
    assert chat.composer.input_value() == "Two"

    # A request that never reaches the server (the network fails) is explained too.
    chat.page.route(re.compile(r".*/api/v1/ai/sessions/[^/]+/messages$"), lambda route: route.abort("connectionreset"))
    with client(server, tenants.a1) as api:
        assert api.put("/api/v1/ai/budget", json={"monthlyBudgetCents": None}).status_code == 200
    chat.composer.press("Enter")
    text = banner_text(chat, "network_error")
    assert "Could not reach the server" in text
    assert chat.composer.input_value() == "Two"

    chat.page.unroute_all()
    chat.composer.press("Enter")
    chat.wait_for_turn_end()
    assert chat.banner.is_hidden()
    assert chat.assistant.inner_text() == "Fine now."
    chat.page.wait_for_function("() => !document.querySelector('#usage meter')")  # no limit left to show
