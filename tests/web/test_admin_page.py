"""The review page (`/admin`) in Chromium: an admin token lists the flagged conversations of its
organization, reads one, and clears its flag; any other token is turned away. Under the same
Content-Security-Policy as the chat page, with no error in the page."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

import httpx2
import pytest

from parley.store import admin
from parley.store.db import Database
from tests.api.conftest import API, create_session, send
from tests.conftest import Tenants, client
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.web.conftest import DESKTOP, PageProblems, WebServerFactory

if TYPE_CHECKING:
    from playwright.sync_api import Browser


async def _admin_token(tenants: Tenants) -> str:
    db = Database(tenants.database_url)
    try:
        user = await admin.find_user(db, "a2@example.test")
        assert user is not None
        return (await admin.create_token(db, user_id=user["id"], org_id=user["org_id"], is_admin=True)).token
    finally:
        await db.dispose()


@pytest.fixture
def admin_token(tenants: Tenants) -> str:
    """Issued before the browser starts (Playwright's loop would refuse `asyncio.run`)."""
    return asyncio.run(_admin_token(tenants))


def test_an_admin_reviews_a_flagged_conversation_and_clears_the_flag(
    web_server: WebServerFactory, admin_token: str, browser: Browser, tenants: Tenants
) -> None:
    from playwright.sync_api import expect

    token = admin_token
    server = web_server(ScriptedProvider(Reply(tokens=["<b>not", " bold</b>"])))
    with client(server, tenants.a1) as c:
        sid = create_session(c, title="Odd answer")
        assert send(c, sid, "Say something odd").types[-1] == "done"
        assert c.post(f"{API}/sessions/{sid}/flag", json={"reason": "it looked wrong"}).is_success
        create_session(c, title="Fine chat")  # not flagged
    page_headers = httpx2.get(f"{server.url}/admin").headers
    assert "script-src 'self'" in page_headers["content-security-policy"]

    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(20_000)
    problems = PageProblems()
    page = context.new_page()
    page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            problems.csp_violations.append(message.text)
            if re.search(r"Content Security Policy|Refused to", message.text)
            else None
        ),
    )
    try:
        page.goto(f"{server.url}/admin")
        page.get_by_label("Admin token").fill(tenants.a1)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#sign-in-error")).to_have_text("That token is not an admin token.")

        page.get_by_label("Admin token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#session-list .session-title")).to_have_text(["Odd answer"])
        expect(page.locator("#session-list .session-flag")).to_have_text(["Flagged: it looked wrong"])
        page.get_by_role("button", name=re.compile("Odd answer")).click()
        expect(page.locator("#transcript-title")).to_have_text("Odd answer")
        expect(page.locator("#messages .message-text")).to_have_text(["Say something odd", "<b>not bold</b>"])
        assert page.locator("#messages b").count() == 0  # shown as written, never as markup
        expect(page.locator("#flag-note")).to_contain_text("it looked wrong")

        page.get_by_role("checkbox", name="Show every conversation").check()
        expect(page.locator("#session-list .session-title")).to_have_count(2)
        page.get_by_role("checkbox", name="Show every conversation").uncheck()
        page.get_by_role("button", name="Clear the flag").click()
        expect(page.locator("#flag-note")).to_have_text("Not flagged.")
        expect(page.locator("#list-status")).to_have_text("Nothing is flagged.")
        expect(page.locator("#session-list li")).to_have_count(0)

        page.reload()  # the token is kept for the tab
        expect(page.locator("#list-status")).to_have_text("Nothing is flagged.")

        # A token that could not be checked (the network failed) is kept: "Sign in" tries it again.
        page.route(re.compile(r".*/api/v1/ai/admin/sessions\?.*"), lambda route: route.abort("connectionreset"))
        page.reload()
        expect(page.locator("#sign-in-error")).to_contain_text("(network_error) Press Sign in to try again.")
        page.unroute_all()
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#list-status")).to_have_text("Nothing is flagged.")

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("Admin token")).to_be_focused()
        assert page.evaluate("() => sessionStorage.getItem('parley.token')") is None
    finally:
        context.close()
    problems.check()
    with client(server, tenants.a1) as c:
        assert c.get(f"{API}/sessions/{sid}").json()["session"]["flaggedAt"] is None
