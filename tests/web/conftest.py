"""Browser fixtures: a real parley server with the chat page, and Debian's Chromium driven by Playwright.

Each test gets its own Playwright and browser, started after the database is seeded and stopped
before the next test: Playwright's sync API marks its event loop as running in this thread between
calls, which would make the shared fixtures' `asyncio.run` fail if the browser outlived a test.
Missing tools fail the tests with what to install; they never skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from parley.app import create_app
from parley.config import load_settings
from parley.providers.base import Provider
from parley.web import mount_web
from tests.api.tooling import Tools, tool_world
from tests.conftest import ServerFactory, Tenants, base_env
from tests.support.live_server import LiveServer
from tests.support.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, ViewportSize

CHROMIUM = Path(os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 360, "height": 740}


WebServerFactory = Callable[..., LiveServer]


@pytest.fixture
def web_server(data_dir: Path, tenants: Tenants) -> Iterator[WebServerFactory]:
    """Start parley (real uvicorn, `create_app`) with the chat page mounted."""
    started: list[LiveServer] = []

    def factory(
        provider: Provider | None = None, *, app_kwargs: dict[str, Any] | None = None, **env: str
    ) -> LiveServer:
        env.setdefault("DATABASE_URL", tenants.database_url)
        app = create_app(load_settings(base_env(data_dir, **env)), provider=provider, **(app_kwargs or {}))
        if not any(getattr(route, "path", None) == "/" for route in app.routes):
            mount_web(app)  # until create_app mounts the page itself
        server = LiveServer(app).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def tools(make_server: ServerFactory, tenants: Tenants, tmp_path: Path) -> Tools:
    """parley with the test MCP tool server (tests/support/mcp_tools_server.py), as the API tests
    have it; start it with `tools.start()` (the page is part of every app)."""
    return tool_world(make_server, tenants, tmp_path)


@pytest.fixture
def browser(tenants: Tenants) -> Iterator[Browser]:
    """Chromium for one test; requesting `tenants` makes sure the database is seeded first."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is not installed: run `.venv/bin/pip install playwright` "
            "(part of the dev extra). Do not run `playwright install`: the tests use /usr/bin/chromium.",
            pytrace=False,
        )
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium` "
            "(Debian's package; `make system-deps` installs it).",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class PageProblems:
    """What the page reported that no test should ever see."""

    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        assert not self.csp_violations, f"Content-Security-Policy violations: {self.csp_violations}"
        assert not self.dialogs, f"the page opened dialogs: {self.dialogs}"


@pytest.fixture
def dropping_proxy() -> Iterator[Callable[[LiveServer], TcpProxy]]:
    """A proxy in front of `server` whose open connections the test can cut."""
    proxies: list[TcpProxy] = []

    def factory(server: LiveServer) -> TcpProxy:
        proxies.append(TcpProxy(server.port))
        return proxies[-1]

    yield factory
    for proxy in proxies:
        proxy.close()


class ChatPage:
    """The chat page in one browser tab, driven as a person would."""

    def __init__(self, page: Page, server: LiveServer, problems: PageProblems, base_url: str) -> None:
        self.page = page
        self.server = server
        self.problems = problems
        self.base_url = base_url

    def open(self) -> ChatPage:
        self.page.goto(self.base_url + "/")
        return self

    def sign_in(self, token: str) -> ChatPage:
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.locator("#workspace").wait_for(state="visible")
        self.page.locator("#session-list[aria-busy=false]").wait_for(state="attached")
        return self

    def expect_titles(self, expected: list[str]) -> None:
        """The chat list shows exactly these titles, in order, once it has (re)rendered."""
        from playwright.sync_api import expect

        expect(self.page.locator("#session-list .session-title")).to_have_text(expected)

    @property
    def composer(self) -> Any:
        return self.page.get_by_role("textbox", name="Message")

    @property
    def stop_button(self) -> Any:
        return self.page.get_by_role("button", name="Stop")

    @property
    def assistant(self) -> Any:
        """The last assistant message's rendered content."""
        return self.page.locator("article.message.assistant .content").last

    @property
    def banner(self) -> Any:
        return self.page.locator("#banner")

    def send(self, text: str) -> None:
        self.composer.fill(text)
        self.composer.press("Enter")

    def wait_for_turn_end(self, timeout: float = 30_000) -> None:
        self.page.wait_for_function(
            "() => document.querySelector('#composer').getAttribute('aria-busy') === 'false'"
            " && !document.querySelector('article.message.assistant.streaming')",
            timeout=timeout,
        )

    def storage(self, key: str) -> str | None:
        value: str | None = self.page.evaluate("(key) => sessionStorage.getItem(key)", key)
        return value

    def saved_turn(self) -> Any:
        """What the page keeps to resume a running turn after a reload (None when no turn runs)."""
        return self.page.evaluate("() => JSON.parse(sessionStorage.getItem('parley.turn') || 'null')")

    def record_assistant_text(self) -> None:
        """Record every distinct text the last assistant message shows, as the user would see it."""
        self.page.evaluate(
            """() => {
                window.__seen = [];
                const log = document.querySelector('#messages');
                new MutationObserver(() => {
                    const all = log.querySelectorAll('article.message.assistant .content');
                    const text = all.length ? all[all.length - 1].textContent : '';
                    if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
                }).observe(log, {subtree: true, childList: true, characterData: true});
            }"""
        )

    def seen_texts(self) -> list[str]:
        seen: list[str] = self.page.evaluate("() => window.__seen")
        return seen


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., ChatPage]]:
    """Open the chat page of `server` in a fresh browser context (desktop size unless told)."""
    contexts: list[tuple[BrowserContext, PageProblems]] = []

    def factory(server: LiveServer, *, viewport: ViewportSize | None = None, base_url: str | None = None) -> ChatPage:
        context = browser.new_context(viewport=viewport or DESKTOP, color_scheme="light")
        context.set_default_timeout(20_000)  # generous: CI machines are shared and slow
        problems = PageProblems()
        contexts.append((context, problems))
        page = context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if re.search(r"Content Security Policy|Refused to", message.text):
                problems.csp_violations.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.page_errors.append(str(error)))

        def on_dialog(dialog: Any) -> None:
            problems.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        return ChatPage(page, server, problems, base_url or server.url).open()

    yield factory
    for context, _ in contexts:
        context.close()
    for _, problems in contexts:
        problems.check()
