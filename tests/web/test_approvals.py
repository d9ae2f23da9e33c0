"""Tool calls on the chat page, in Chromium against a real parley with a real stdio MCP tool server.

A call that needs a person shows a card in the reply; approving, denying or "always allowing" it
continues the same reply. The cards are rebuilt from the server after a reload and on another
device, expire on time, can be decided together, and a plan is approved once and then shows its
steps running. What is checked behind the page: what the tool server really ran (its log), what
the model was sent, and the requests the page made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Request, expect

from tests.api.conftest import API, detail
from tests.api.tooling import Tools, quoting_the_result, tool_results
from tests.conftest import client
from tests.support.scripted_provider import Reply, tool_call
from tests.web.conftest import PHONE, ChatPage

OpenPage = Callable[..., ChatPage]


def card(chat: ChatPage, tool: str = "record") -> Locator:
    """The approval card of the waiting call of `tool` (a region named by its heading)."""
    return chat.page.get_by_role("region", name=f"Allow {tool} to run?")


def tool_blocks(chat: ChatPage) -> Locator:
    return chat.page.locator("article.message.assistant .tool-call")


def reply_texts(chat: ChatPage) -> list[str]:
    """The text blocks of the last reply, in order."""
    texts: list[str] = chat.page.locator("article.message.assistant").last.locator(".content").all_inner_texts()
    return texts


def decisions_sent(chat: ChatPage) -> list[tuple[str, Any]]:
    """Record every decision request the page makes: (the route's last segment, its JSON body)."""
    sent: list[tuple[str, Any]] = []

    def on_request(request: Request) -> None:
        if request.method == "POST" and re.search(r"/(approve/[^/]+|tool-decisions|approve-plan)$", request.url):
            route = request.url.rsplit("/", 1)[-1] if "/approve/" not in request.url else "approve"
            sent.append((route, json.loads(request.post_data or "null")))

    chat.page.on("request", on_request)
    return sent


def focused_class(chat: ChatPage) -> str:
    name: str = chat.page.evaluate("() => document.activeElement?.className || ''")
    return name


def test_a_call_that_asks_shows_a_card_and_approving_it_continues_the_same_reply(
    tools: Tools, open_page: OpenPage, tmp_path: Path
) -> None:
    tools.provider.enqueue(tool_call("t__record", {"note": "milk"}, text=["Let me note that."]), quoting_the_result)
    chat = open_page(tools.start()).sign_in(tools.tenants.a1)
    sent = decisions_sent(chat)
    chat.send("Remember to buy milk")

    asking = card(chat)
    expect(asking).to_be_visible()
    expect(asking.locator(".approval-description")).to_have_text("Record a note in the log file.")
    expect(asking.locator(".approval-input")).to_have_text('{\n  "note": "milk"\n}')  # the arguments in full
    expect(asking.locator(".approval-time")).to_have_text(re.compile(r"^Expires in (9 min \d{1,2}|10 min 0) s$"))
    expect(chat.page.locator("#tool-announcer")).to_have_text(
        "parley asks before running record. Approve or deny it in the conversation."
    )
    chat.wait_for_turn_end()
    chat.page.wait_for_function("() => document.activeElement?.classList.contains('approval-card')")
    assert tool_blocks(chat).first.get_attribute("data-state") == "asking"
    assert reply_texts(chat) == ["Let me note that."]
    expect(chat.page.locator("article.message.assistant .status")).to_have_text(
        "Waits for your decision on its tool calls."
    )
    # Nothing can be sent while the call waits (the server would refuse it), and the hint says why.
    expect(chat.page.locator("#send")).to_be_disabled()
    expect(chat.page.locator("#composer-hint")).to_contain_text("waits for your decision")
    assert tools.ran() == []
    chat.page.screenshot(path=str(tmp_path / "approval-card-desktop.png"))
    chat.page.emulate_media(color_scheme="dark")
    chat.page.screenshot(path=str(tmp_path / "approval-card-desktop-dark.png"))
    chat.page.emulate_media(color_scheme="light")
    chat.page.set_viewport_size(PHONE)
    assert chat.page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    chat.page.screenshot(path=str(tmp_path / "approval-card-phone.png"))

    asking.get_by_role("button", name="Approve", exact=True).click()
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("Result: recorded: milk")
    chat.wait_for_turn_end()

    # The continuation went into the same reply: its text, the call (done) and the answer.
    assert chat.page.locator("article.message.assistant").count() == 1
    assert reply_texts(chat) == ["Let me note that.", "Result: recorded: milk"]
    block = tool_blocks(chat)
    expect(block).to_have_count(1)
    expect(block).to_have_attribute("data-state", "done")
    assert card(chat).count() == 0
    block.locator("summary").click()
    expect(block.locator(".tool-output")).to_have_text("recorded: milk")
    expect(block.locator(".tool-input")).to_have_text('{\n  "note": "milk"\n}')
    assert chat.page.locator("article.message.assistant .status").is_hidden()
    expect(chat.page.locator("#send")).to_be_enabled()
    assert chat.banner.is_hidden()
    assert sent == [("approve", {"approved": True})]
    assert tools.ran() == ["milk"]

    # Read back from the server, the reply shows the same.
    chat.page.reload()
    expect(tool_blocks(chat)).to_have_attribute("data-state", "done")
    assert reply_texts(chat) == ["Let me note that.", "Result: recorded: milk"]
    assert tools.ran() == ["milk"]


def test_a_reload_while_the_continuation_streams_resumes_it_in_the_same_reply(
    tools: Tools, open_page: OpenPage
) -> None:
    tokens = [f"w{i:02d} " for i in range(40)]  # ~2.4 s: time enough to reload mid-continuation
    tools.provider.enqueue(
        tool_call("t__record", {"note": "slow"}, text=["Let me note that."]), Reply(tokens=tokens, delay=0.06)
    )
    chat = open_page(tools.start()).sign_in(tools.tenants.a1)
    resumed: list[str] = []
    chat.page.on(
        "request",
        lambda request: (
            resumed.append(request.headers.get("last-event-id", "")) if request.url.endswith("/events") else None
        ),
    )
    chat.send("Note slowly")
    expect(card(chat)).to_be_visible()
    chat.wait_for_turn_end()
    card(chat).get_by_role("button", name="Approve", exact=True).click()
    expect(chat.page.locator("article.message.assistant .content").last).to_contain_text("w05")

    chat.page.reload()
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("".join(tokens).strip())
    chat.wait_for_turn_end()
    assert chat.page.locator("article.message.assistant").count() == 1
    assert reply_texts(chat) == ["Let me note that.", "".join(tokens).strip()]
    expect(tool_blocks(chat)).to_have_attribute("data-state", "done")
    # It re-attached to the continuation's stream (the reply's second), after the last event seen.
    assert len(resumed) == 1
    assert re.fullmatch(r"2-\d+", resumed[0]), resumed
    assert tools.ran() == ["slow"]
    assert tools.provider.opened == 2


def test_deny_with_a_reason_from_the_keyboard(tools: Tools, open_page: OpenPage) -> None:
    tools.provider.enqueue(tool_call("t__record", {"note": "x"}), quoting_the_result)
    chat = open_page(tools.start()).sign_in(tools.tenants.a1)
    sent = decisions_sent(chat)
    chat.send("Note x")
    expect(card(chat)).to_be_visible()
    chat.wait_for_turn_end()
    chat.page.wait_for_function("() => document.activeElement?.classList.contains('approval-card')")

    # From the card: Tab to the reason, type it, Enter denies.
    for _ in range(6):
        chat.page.keyboard.press("Tab")
        if chat.page.evaluate("() => document.activeElement?.labels?.[0]?.textContent") == (
            "Reason for denying (optional)"
        ):
            break
    else:
        raise AssertionError("the reason field is not reachable with Tab")
    chat.page.keyboard.type("not today")
    chat.page.keyboard.press("Enter")

    expect(tool_blocks(chat)).to_have_attribute("data-state", "denied")
    expect(tool_blocks(chat).locator(".tool-state")).to_have_text("Denied")
    expect(chat.page.locator("article.message.assistant .content").last).to_contain_text("declined")
    chat.wait_for_turn_end()
    assert sent == [("approve", {"approved": False, "reason": "not today"})]
    assert tools.ran() == []
    told = tool_results(tools.provider.calls[1])[0]
    assert told.is_error
    assert "not today" in told.output


def test_always_allow_lets_the_next_call_of_the_tool_run_without_asking(tools: Tools, open_page: OpenPage) -> None:
    tools.provider.enqueue(
        tool_call("t__record", {"note": "1"}), Reply(tokens=["Noted."]), tool_call("t__record", {"note": "2"}),
        quoting_the_result,
    )  # fmt: skip
    server = tools.start()
    chat = open_page(server).sign_in(tools.tenants.a1)
    sent = decisions_sent(chat)
    chat.send("Note 1")
    expect(card(chat)).to_be_visible()
    chat.wait_for_turn_end()
    assert chat.page.locator("#allowed-tools").is_hidden()
    card(chat).get_by_role("button", name="Always allow this tool in this chat").click()
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("Noted.")
    chat.wait_for_turn_end()
    assert sent == [("approve", {"approved": True, "always": True})]
    expect(chat.page.locator("#allowed-tools")).to_have_text("Always allowed in this chat: record")

    chat.send("Note 2")
    expect(chat.page.locator("article.message.assistant").last.locator(".content")).to_have_text("Result: recorded: 2")
    chat.wait_for_turn_end()
    assert card(chat).count() == 0, "the second call asked again"
    expect(chat.page.locator("article.message.assistant").last.locator(".tool-call")).to_have_attribute(
        "data-state", "done"
    )
    assert tools.ran() == ["1", "2"]
    sid = chat.storage("parley.session")
    with client(server, tools.tenants.a1) as api:
        assert detail(api, sid)["session"]["allowedTools"] == ["t__record"]

    # What is always allowed comes from the session, so it survives a reload; the menu says it too.
    chat.page.reload()
    expect(chat.page.locator("#allowed-tools")).to_have_text("Always allowed in this chat: record")
    chat.page.get_by_role("button", name="Tools", exact=True).click()
    option = chat.page.locator("#tool-list .tool-option").filter(has=chat.page.get_by_text("t__record", exact=True))
    expect(option.locator(".badge")).to_have_text("Always allowed")


def test_a_waiting_call_survives_a_reload_and_shows_on_another_device(tools: Tools, open_page: OpenPage) -> None:
    tools.provider.enqueue(tool_call("t__record", {"note": "later"}, text=["Let me note that."]), quoting_the_result)
    server = tools.start()
    chat = open_page(server).sign_in(tools.tenants.a1)
    chat.send("Remember this for later")
    expect(card(chat)).to_be_visible()
    chat.wait_for_turn_end()

    # A reload rebuilds the card from the server: pendingExecutions and the reply's parts.
    chat.page.reload()
    rebuilt = card(chat)
    expect(rebuilt).to_be_visible()
    expect(rebuilt.locator(".approval-input")).to_have_text('{\n  "note": "later"\n}')
    expect(rebuilt.locator(".approval-description")).to_have_text("Record a note in the log file.")
    assert reply_texts(chat) == ["Let me note that."]
    expect(chat.page.locator("#send")).to_be_disabled()

    # Signed in on another device, the same card; approved there, the reply goes on there.
    other = open_page(server).sign_in(tools.tenants.a1)
    other.page.locator("#session-list .session-item").first.click()
    expect(card(other)).to_be_visible()
    card(other).get_by_role("button", name="Approve", exact=True).click()
    expect(other.page.locator("article.message.assistant .content").last).to_have_text("Result: recorded: later")
    other.wait_for_turn_end()

    # The first page still offers it: the server says it was decided, and the page reads the chat again.
    card(chat).get_by_role("button", name="Approve", exact=True).click()
    chat.page.wait_for_function(
        "() => document.querySelector('#banner .banner-code')?.textContent === 'already_decided'"
    )
    expect(tool_blocks(chat)).to_have_attribute("data-state", "done")
    assert reply_texts(chat) == ["Let me note that.", "Result: recorded: later"]
    assert tools.ran() == ["later"]

    # A call that another device caused while this page knew nothing of it: sending is refused
    # (409 approval_pending), the text is given back and the card appears.
    tools.provider.enqueue(tool_call("t__record", {"note": "from elsewhere"}))
    sid = chat.storage("parley.session")
    with (
        client(server, tools.tenants.a1) as api,
        api.stream("POST", f"{API}/sessions/{sid}/messages", json={"content": "note from elsewhere"}) as response,
    ):
        response.read()
    chat.send("Anything new?")
    chat.page.wait_for_function(
        "() => document.querySelector('#banner .banner-code')?.textContent === 'approval_pending'"
    )
    expect(card(chat).locator(".approval-input")).to_have_text('{\n  "note": "from elsewhere"\n}')
    assert chat.composer.input_value() == "Anything new?"
    assert tools.ran() == ["later"]


def test_a_call_not_decided_in_time_expires_on_the_page(tools: Tools, open_page: OpenPage) -> None:
    tools.provider.enqueue(tool_call("t__record", {"note": "late"}), Reply(tokens=["Never mind."]))
    server = tools.start(PARLEY_APPROVAL_TIMEOUT_SECONDS="10")
    chat = open_page(server).sign_in(tools.tenants.a1)
    chat.send("Note late")
    asking = card(chat)
    time_left = asking.locator(".approval-time")
    expect(time_left).to_have_text(re.compile(r"^Expires in \d+ s$"))
    first = time_left.inner_text()
    expect(time_left).not_to_have_text(first, timeout=3_000)  # it counts down

    expect(time_left).to_have_text("Expired: this was not approved in time.", timeout=15_000)
    for name in ("Approve", "Always allow this tool in this chat", "Deny"):
        expect(asking.get_by_role("button", name=name, exact=True)).to_be_disabled()
    expect(asking.get_by_label("Reason for denying (optional)")).to_be_disabled()
    expect(tool_blocks(chat)).to_have_attribute("data-state", "expired")
    # An expired call no longer holds the chat: a message may be sent again.
    expect(chat.page.locator("#send")).to_be_enabled()

    chat.page.reload()
    expect(card(chat).locator(".approval-time")).to_have_text("Expired: this was not approved in time.")
    expect(card(chat).get_by_role("button", name="Approve", exact=True)).to_be_disabled()

    chat.send("Are you still there?")
    expect(chat.page.locator("article.message.assistant").last.locator(".content")).to_have_text("Never mind.")
    chat.wait_for_turn_end()
    assert tools.ran() == []
    assert "in time" in tool_results(tools.provider.calls[-1])[0].output


def test_several_waiting_calls_are_decided_one_by_one_or_all_together(
    tools: Tools, open_page: OpenPage, tmp_path: Path
) -> None:
    tools.provider.enqueue(
        Reply(tokens=[], calls=[("t__record", {"note": n}) for n in "abc"], finish="tool_calls"),
        lambda messages: Reply(tokens=[" | ".join(sorted(r.output for r in tool_results(messages)))]),
    )
    chat = open_page(tools.start()).sign_in(tools.tenants.a1)
    sent = decisions_sent(chat)
    chat.send("Note a, b and c")
    bar = chat.page.get_by_role("group", name="Decide every waiting tool call")
    expect(bar).to_contain_text("3 tool calls wait for your decision.")
    cards = chat.page.locator("section.approval-card")
    expect(cards).to_have_count(3)
    chat.wait_for_turn_end()
    chat.page.screenshot(path=str(tmp_path / "several-calls.png"), full_page=True)

    # One approved on its own: the others still wait (a JSON answer), and the page says so.
    cards.nth(0).get_by_role("button", name="Approve", exact=True).click()
    expect(tool_blocks(chat).nth(0)).to_have_attribute("data-state", "approved")
    expect(tool_blocks(chat).nth(0).locator(".tool-state")).to_have_text("Approved, waits for the other calls")
    expect(bar).to_contain_text("2 tool calls wait for your decision.")
    expect(chat.page.locator("#tool-announcer")).to_have_text("Decision saved. 2 more calls wait for your decision.")
    assert tools.ran() == []

    # The rest denied together, one with a reason typed on its card.
    expect(cards).to_have_count(2)
    cards.nth(1).get_by_label("Reason for denying (optional)").fill("not c")
    bar.get_by_role("button", name="Deny all").click()
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text(
        "The user declined this tool call. | The user declined this tool call. Their reason: not c | recorded: a"
    )
    chat.wait_for_turn_end()
    assert bar.count() == 0
    expect(tool_blocks(chat)).to_have_count(3)
    states = [tool_blocks(chat).nth(i).get_attribute("data-state") for i in range(3)]
    assert states == ["done", "denied", "denied"]
    executions = [d["executionId"] for d in sent[1][1]["decisions"]]
    assert sent[0][0] == "approve"
    assert sent[1] == (
        "tool-decisions",
        {
            "decisions": [
                {"executionId": executions[0], "approved": False},
                {"executionId": executions[1], "approved": False, "reason": "not c"},
            ]
        },
    )
    assert tools.ran() == ["a"]


PLAN = {
    "title": "Two notes",
    "steps": [
        {"toolName": "t__record", "input": {"note": "a"}, "reasoning": "first"},
        {"toolName": "t__record", "input": {"note": "b"}, "reasoning": "second"},
    ],
}


def test_a_plan_is_approved_once_and_its_steps_show_their_progress(
    tools: Tools, open_page: OpenPage, tmp_path: Path
) -> None:
    tools.provider.enqueue(
        tool_call("propose_action_plan", PLAN),
        tool_call("t__record", {"note": "a"}),
        tool_call("t__record", {"note": "b"}),
        Reply(tokens=["Both noted."]),
        tool_call("propose_action_plan", {**PLAN, "title": "Two more"}),
        Reply(tokens=["As you wish."]),
    )
    server = tools.start()
    with client(server, tools.tenants.a1) as api:
        assert api.put(f"{API}/budget", json={"approvalMode": "action_plan"}).status_code == 200
    chat = open_page(server).sign_in(tools.tenants.a1)
    sent = decisions_sent(chat)
    chat.send("Note a, then b")

    plan = chat.page.get_by_role("region", name="Plan: Two notes")
    expect(plan).to_be_visible()
    expect(plan).to_have_attribute("data-status", "pending")
    expect(plan.locator(".plan-state")).to_have_text("Waits for your approval")
    steps = plan.locator("li.plan-step")
    expect(steps).to_have_count(2)
    expect(steps.locator(".step-reason")).to_have_text(["first", "second"])
    expect(steps.locator(".step-input")).to_have_text(['{\n  "note": "a"\n}', '{\n  "note": "b"\n}'])
    expect(steps.locator(".step-state")).to_have_text(["To do", "To do"])
    expect(plan.locator(".approval-time")).to_have_text(re.compile(r"^Expires in "))
    expect(chat.page.locator("#tool-announcer")).to_contain_text("parley proposes a plan of 2 steps: Two notes.")
    chat.wait_for_turn_end()
    expect(chat.page.locator("#send")).to_be_disabled()
    chat.page.screenshot(path=str(tmp_path / "plan-waiting.png"))

    plan.get_by_role("button", name="Approve plan").click()
    expect(chat.page.locator("article.message.assistant .content").last).to_have_text("Both noted.")
    chat.wait_for_turn_end()
    expect(plan).to_have_attribute("data-status", "completed")
    expect(plan.locator(".plan-state")).to_have_text("Completed")
    expect(steps.locator(".step-state")).to_have_text(["Done", "Done"])
    assert plan.get_by_role("button", name="Approve plan").is_hidden()
    expect(tool_blocks(chat)).to_have_count(2)  # each step's call, in the reply
    assert [tool_blocks(chat).nth(i).get_attribute("data-state") for i in range(2)] == ["done", "done"]
    assert sent == [("approve-plan", {"approved": True})]
    assert tools.ran() == ["a", "b"]
    chat.page.screenshot(path=str(tmp_path / "plan-completed.png"), full_page=True)

    # Read back: the plan as stored, every step done.
    chat.page.reload()
    plan = chat.page.get_by_role("region", name="Plan: Two notes")
    expect(plan).to_have_attribute("data-status", "completed")
    expect(plan.locator("li.plan-step .step-state")).to_have_text(["Done", "Done"])

    # A plan rejected: none of its steps run.
    chat.send("Two more notes")
    rejected = chat.page.get_by_role("region", name="Plan: Two more")
    expect(rejected).to_have_attribute("data-status", "pending")
    chat.wait_for_turn_end()
    rejected.get_by_role("button", name="Reject plan").click()
    expect(chat.page.locator("article.message.assistant").last.locator(".content")).to_have_text("As you wish.")
    chat.wait_for_turn_end()
    expect(rejected).to_have_attribute("data-status", "rejected")
    expect(rejected.locator(".plan-state")).to_have_text("Rejected")
    expect(rejected.locator("li.plan-step .step-state")).to_have_text(["Not run", "Not run"])
    assert sent[-1] == ("approve-plan", {"approved": False})
    assert tools.ran() == ["a", "b"]
