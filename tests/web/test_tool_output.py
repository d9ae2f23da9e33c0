"""What tools put on the page, and forcing one: output that tries to be markup stays inert text on a
phone-sized screen; `/tool <name> <text>` and the tools menu have the model call one tool now; the
page's own helpers (command parsing, name matching, a reply's blocks), run in Chromium."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from parley.providers.base import ForcedTool
from parley.tools import demo_config
from tests.api.tooling import Tools, quoting_the_result
from tests.conftest import Tenants
from tests.support.scripted_provider import Reply, ScriptedProvider, tool_call
from tests.web.conftest import PHONE, ChatPage, WebServerFactory

OpenPage = Callable[..., ChatPage]

HOSTILE_TEXT = (
    '<img src=x onerror=alert(1)> <script>alert(2)</script> <a href="javascript:alert(3)">click</a>\n'
    "[x](javascript:alert(4)) <svg onload=alert(5)> <iframe src=javascript:alert(6)></iframe>\n"
    "<style>body{display:none}</style> <b onmouseover=alert(7)>bold</b>\n" + "a-very-long-line-" * 400 + "\n"
)
HOSTILE_JSON = json.dumps({"html": "<img src=x onerror=alert(8)>", "list": [1, 2]})
HUGE_LINE = "x" * 300_000  # one line, past the server's 256 KiB cap: stored and shown truncated
HOSTILE_DESCRIPTION = "<img src=x onerror=alert('description')> Record a note."

INERT = """() => {
    const places = [document.querySelector('#messages'), document.querySelector('#tool-menu')];
    const found = [];
    for (const place of places) {
        found.push(...[...place.querySelectorAll('img, script, svg, iframe, style, a, b, object, embed')]
            .map((node) => node.tagName));
        found.push(...[...place.querySelectorAll('*')]
            .filter((node) => [...node.attributes].some((a) => a.name.startsWith('on')))
            .map((node) => `${node.tagName} with a handler`));
    }
    return { found, images: document.images.length, hidden: getComputedStyle(document.body).display };
}"""


def test_hostile_tool_output_and_arguments_are_inert_text_on_a_phone(
    tools: Tools, open_page: OpenPage, tmp_path: Path
) -> None:
    tools.configure(env={"TEST_TOOL_DESCRIPTION": HOSTILE_DESCRIPTION})
    tools.provider.enqueue(
        Reply(
            tokens=[],
            calls=[
                ("t__echo", {"text": HOSTILE_TEXT}),
                ("t__echo", {"text": HOSTILE_JSON}),
                ("t__echo", {"text": HUGE_LINE}),
                ("t__record", {"note": "<img src=x onerror=alert('note')>"}),
            ],
            finish="tool_calls",
        ),
        Reply(tokens=["Done."]),
    )
    chat = open_page(tools.start(), viewport=PHONE).sign_in(tools.tenants.a1)
    chat.send("Show me what the tools say")
    card = chat.page.get_by_role("region", name="Allow record to run?")
    expect(card).to_be_visible()
    chat.wait_for_turn_end()

    blocks = chat.page.locator("article.message.assistant .tool-call")
    expect(blocks).to_have_count(4)
    expect(card.locator(".approval-description")).to_have_text(HOSTILE_DESCRIPTION)
    expect(card.locator(".approval-input")).to_have_text('{\n  "note": "<img src=x onerror=alert(\'note\')>"\n}')
    outputs = chat.page.locator("article.message.assistant .tool-output")
    expect(outputs.nth(0)).to_have_text(HOSTILE_TEXT)
    # JSON output is indented, and what is inside it is text too.
    expect(outputs.nth(1)).to_have_text(json.dumps(json.loads(HOSTILE_JSON), indent=2))
    # The huge line was cut by the server, and the page says so.
    expect(blocks.nth(2).locator(".badge.warning")).to_have_text("Output truncated")
    assert "output truncated" in outputs.nth(2).text_content()
    assert blocks.nth(0).locator(".badge.warning").is_hidden()

    # Every view open, on a 360 px screen: nothing is made from the text, nothing is wider than the screen.
    chat.page.locator("details.tool-details").evaluate_all("(all) => all.forEach((d) => { d.open = true; })")
    found = chat.page.evaluate(INERT)
    assert found == {"found": [], "images": 0, "hidden": "flex"}, found
    widths = chat.page.evaluate(
        """() => ({
            page: document.documentElement.scrollWidth,
            conversation: document.querySelector('#messages').scrollWidth
                - document.querySelector('#messages').clientWidth,
        })"""
    )
    assert widths == {"page": PHONE["width"], "conversation": 0}, widths
    chat.page.screenshot(path=str(tmp_path / "hostile-output-phone.png"))

    # The menu shows the description as text too.
    chat.page.get_by_role("button", name="Tools", exact=True).click()
    expect(chat.page.locator("#tool-list .tool-option-description", has_text="Record a note.")).to_have_text(
        HOSTILE_DESCRIPTION
    )
    assert chat.page.evaluate(INERT)["found"] == []
    chat.page.keyboard.press("Escape")

    card.get_by_role("button", name="Deny", exact=True).click()
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("Done.")
    chat.wait_for_turn_end()
    chat.page.reload()  # read back from the server, through the same views
    expect(chat.page.locator("article.message.assistant .tool-call")).to_have_count(4)
    chat.page.locator("details.tool-details").evaluate_all("(all) => all.forEach((d) => { d.open = true; })")
    expect(chat.page.locator("article.message.assistant .tool-output").nth(0)).to_have_text(HOSTILE_TEXT)
    assert chat.page.evaluate(INERT)["found"] == []
    assert chat.page.evaluate("() => document.documentElement.scrollWidth") == PHONE["width"]
    assert chat.problems.dialogs == []
    assert tools.ran() == []


def test_tool_command_and_tools_menu_force_a_tool(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage, tmp_path: Path
) -> None:
    config = tmp_path / "demo-tools.json"
    config.write_text(json.dumps(demo_config(tmp_path / "notes")))
    provider = ScriptedProvider()
    provider.enqueue(
        tool_call("demo__calculate", {"expression": "2+3*4"}), quoting_the_result,
        tool_call("demo__calculate", {"expression": "6*7"}), quoting_the_result,
    )  # fmt: skip
    server = web_server(provider, PARLEY_MCP_CONFIG=str(config))
    chat = open_page(server).sign_in(tenants.a1)

    # Names that match no tool, or several, are refused before anything is sent.
    chat.send("/tool nosuch 1+1")
    chat.page.wait_for_function("() => document.querySelector('#banner .banner-code')?.textContent === 'unknown_tool'")
    assert "Calculator (demo__calculate)" in chat.banner.inner_text()
    assert chat.composer.input_value() == "/tool nosuch 1+1"
    chat.send("/tool s 1+1")
    chat.page.wait_for_function(
        "() => document.querySelector('#banner .banner-code')?.textContent === 'ambiguous_tool'"
    )
    assert "Save a note (demo__add_note) or Search notes (demo__search_notes)" in chat.banner.inner_text()
    assert chat.page.locator("article.message").count() == 0
    assert provider.opened == 0

    # `/tool calculator …` names the tool by its title: demo__calculate, forced, with the rest as the message.
    chat.send("/tool calculator 2+3*4")
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("Result: 2+3*4 = 14")
    chat.wait_for_turn_end()
    assert provider.choices[0] == ForcedTool("demo__calculate")
    assert provider.calls[0][-1].plain_text == "2+3*4"
    assert chat.page.locator("article.message.user .content").inner_text() == "2+3*4"
    assert chat.page.locator("article.message.user .meta").inner_text() == "Asked parley to use Calculator"
    block = chat.page.locator("article.message.assistant .tool-call")
    expect(block.locator(".tool-title")).to_have_text("Calculator")
    expect(block).to_have_attribute("data-state", "done")
    assert chat.banner.is_hidden()

    # The menu lists the chat's tools with their descriptions and which ask; picking one writes the command.
    tools_button = chat.page.get_by_role("button", name="Tools", exact=True)
    tools_button.click()
    expect(tools_button).to_have_attribute("aria-expanded", "true")
    options = chat.page.locator("#tool-list .tool-option")
    expect(options.locator(".tool-title")).to_have_text(
        ["Save a note", "Calculator", "List notes", "Current date and time", "Search notes"]  # by name
    )
    save = options.filter(has_text="Save a note")
    expect(save.locator(".badge")).to_have_text("Asks first")
    assert options.filter(has_text="Calculator").locator(".badge").count() == 0
    assert options.filter(has_text="Calculator").locator(".tool-option-description").inner_text()
    chat.page.wait_for_function("() => document.activeElement.classList.contains('tool-option')")
    chat.page.screenshot(path=str(tmp_path / "tools-menu.png"))
    # Keyboard: arrows move between the tools, Escape closes the menu and gives the focus back.
    chat.page.keyboard.press("ArrowDown")
    assert chat.page.evaluate("() => document.activeElement.querySelector('.tool-title').textContent") == "Calculator"
    chat.page.keyboard.press("Escape")
    expect(chat.page.locator("#tool-menu")).to_be_hidden()
    assert chat.page.evaluate("() => document.activeElement.id") == "tools-button"
    chat.page.keyboard.press("Enter")
    chat.page.wait_for_function("() => document.activeElement.classList.contains('tool-option')")
    chat.page.keyboard.press("ArrowDown")
    chat.page.keyboard.press("Enter")
    assert chat.composer.input_value() == "/tool demo__calculate "
    assert chat.page.evaluate("() => document.activeElement.id") == "composer-input"
    chat.page.keyboard.type("6*7")
    chat.page.keyboard.press("Enter")
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("Result: 6*7 = 42")
    chat.wait_for_turn_end()
    assert provider.choices[2] == ForcedTool("demo__calculate")
    assert provider.calls[2][-1].plain_text == "6*7"

    # In a new chat the menu creates the chat, whose tools it lists.
    chat.page.get_by_role("button", name="New chat").click()
    assert chat.storage("parley.session") is None
    tools_button.click()
    expect(options).to_have_count(5)
    assert chat.storage("parley.session") is not None


def test_the_pages_tool_helpers(web_server: WebServerFactory, open_page: OpenPage) -> None:
    chat = open_page(web_server(ScriptedProvider()))
    result = chat.page.evaluate(
        """async () => {
            const { parseToolCommand, matchTools, resolveToolCommand } = await import('/static/tool-menu.js');
            const { applyReplyEvent, replyBlocks, replyText, formatOutput } = await import('/static/reply.js');
            const tools = [
                { name: 'demo__calculate', title: 'Calculator' },
                { name: 'demo__now', title: 'Current date and time' },
                { name: 'files__read', title: 'read' },
                { name: 'files__read_many', title: 'read_many' },
            ];
            const names = (query) => matchTools(tools, query).map((t) => t.name);
            const refused = (command) => {
                try { resolveToolCommand(tools, command); return null; } catch (err) { return err.code; }
            };
            const parts = [];
            for (const [type, data] of [
                ['content_delta', { delta: 'Let me ' }],
                ['content_delta', { delta: 'look.' }],
                ['approval_required', { executionId: 'e1', toolUseId: 'u1', toolName: 'files__read', input: {} }],
                ['tool_use_start', { executionId: 'e1', toolUseId: 'u1', toolName: 'files__read', input: {} }],
                ['plan_approval_required', { executionId: 'e2', toolUseId: 'u9', planId: 'p', title: 'T', steps: [] }],
                ['tool_result', { toolUseId: 'u1', toolName: 'files__read', output: 'ok', isError: false }],
                ['tool_result', { toolUseId: 'u8', toolName: 'propose_action_plan', output: 'other plan' }],
                ['tool_result', { toolUseId: 'u9', toolName: 'propose_action_plan', output: 'approved' }],
                ['tool_result', { toolUseId: 'u5', toolName: 'files__read', output: 'lone', isError: true }],
                ['content_delta', { delta: 'Done.' }],
                ['message_end', {}],
            ]) applyReplyEvent(parts, type, data);
            return {
                commands: ['/tool calculator 2+3*4', '/TOOL now', '/tool', '  /tool x\\n two\\nlines ',
                           '/toolbox x', 'hi'].map(parseToolCommand),
                matches: [names('calculator'), names('CALC'), names('demo__now'), names('now'), names('current'),
                          names('read'), names('read_'), names('demo'), names('nothing')],
                refused: [refused({ query: '', content: '' }), refused({ query: 'zzz', content: '' }),
                          refused({ query: 'demo', content: '' })],
                resolved: resolveToolCommand(tools, { query: 'now', content: '' }).content,
                blocks: replyBlocks(parts).map((b) => [b.kind, b.key, b.text ?? (b.result && b.result.output) ?? null]),
                text: replyText(parts),
                outputs: [formatOutput('{"a":[1]}'), formatOutput(' [1,2'), formatOutput('14'), formatOutput('<b>')],
            };
        }"""
    )
    assert result["commands"] == [
        {"query": "calculator", "content": "2+3*4"},
        {"query": "now", "content": ""},
        {"query": "", "content": ""},
        {"query": "x", "content": "two\nlines"},
        None,
        None,
    ]
    assert result["matches"] == [
        ["demo__calculate"],
        ["demo__calculate"],
        ["demo__now"],
        ["demo__now"],
        ["demo__now"],
        ["files__read"],  # an exact name wins over the longer names it begins
        ["files__read_many"],
        ["demo__calculate", "demo__now"],
        [],
    ]
    assert result["refused"] == ["tool_not_named", "unknown_tool", "ambiguous_tool"]
    assert result["resolved"] == "Current date and time"  # a command without text sends the tool's title
    assert result["blocks"] == [
        ["text", "text:0", "Let me look."],
        ["tool", "tool:e1", "ok"],  # its approval and its start are one call
        ["plan", "plan:e2", "approved"],  # the plan's result is matched by its call's id
        ["tool", "result:u8", "other plan"],  # not by the plan tool's name
        ["tool", "result:u5", "lone"],
        ["text", "text:7", "Done."],
    ]
    assert result["text"] == "Let me look.\n\nDone."
    assert result["outputs"] == ['{\n  "a": [\n    1\n  ]\n}', " [1,2", "14", "<b>"]
