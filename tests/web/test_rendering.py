"""Replies are untrusted: they render as inert Markdown. Also the page's own parsers, run in Chromium."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Tenants
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.web.conftest import ChatPage, WebServerFactory

OpenPage = Callable[..., ChatPage]

HOSTILE_REPLY = [
    "Look: <img src=x onerror=alert(1)> and [x](javascript:alert(1)) and <script>alert(2)</script>\n\n",
    "```html\n<script>alert(3)</script>\n```\n\n",
    '<a href="javascript:alert(4)">click</a> ![y](javascript:alert(5)) <svg onload=alert(6)>\n\n',
    "[z](JaVaScRiPt:alert(7)) [d](data:text/html,<script>alert(8)</script>) <javascript:alert(9)>\n\n",
    "<iframe src=javascript:alert(10)></iframe> **<b onmouseover=alert(11)>bold</b>**\n\n",
    "[ok](https://example.com/safe)",
]

INERT_CHECK = """() => {
    const box = document.querySelector('#messages');
    const risky = box.querySelectorAll('img, script, svg, iframe, object, embed, b, style, link, meta, form');
    const links = [...box.querySelectorAll('a')].map((a) => a.getAttribute('href'));
    const handlers = [...box.querySelectorAll('*')]
        .filter((el) => [...el.attributes].some((a) => a.name.startsWith('on')));
    return {
        risky: [...risky].map((el) => el.tagName),
        links,
        handlers: handlers.length,
        images: document.images.length,
    };
}"""


def _assert_inert(chat: ChatPage) -> None:
    found = chat.page.evaluate(INERT_CHECK)
    assert found["risky"] == [], found
    assert found["links"] == ["https://example.com/safe"], found
    assert found["handlers"] == 0, found
    assert found["images"] == 0, found
    assert chat.problems.dialogs == [], "a script in the reply ran"
    text = chat.assistant.inner_text()
    for visible in (
        "<img src=x onerror=alert(1)>",
        "[x](javascript:alert(1))",
        "<script>alert(2)</script>",
        "<script>alert(3)</script>",
        '<a href="javascript:alert(4)">click</a>',
        "<svg onload=alert(6)>",
        "[z](JaVaScRiPt:alert(7))",
        "<javascript:alert(9)>",
        "<b onmouseover=alert(11)>bold</b>",
    ):
        assert visible in text, f"{visible!r} is not shown as text"


def test_a_hostile_reply_is_inert_text(web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage) -> None:
    server = web_server(ScriptedProvider(Reply(tokens=HOSTILE_REPLY, delay=0.02)))
    chat = open_page(server).sign_in(tenants.a1)
    chat.send("<img src=x onerror=alert('user')> is my question")
    chat.wait_for_turn_end()
    _assert_inert(chat)
    assert chat.page.locator("article.message.user .content").inner_text() == (
        "<img src=x onerror=alert('user')> is my question"
    )
    # The stored conversation renders through the same path after a reload.
    chat.page.reload()
    chat.page.locator("article.message.assistant").wait_for()
    _assert_inert(chat)
    assert chat.problems.dialogs == []


MARKDOWN_CASES: list[tuple[str, str]] = [
    ("plain text", "<p>plain text</p>"),
    ("**b** *i* _u_ ~~s~~ `c`", "<p><strong>b</strong> <em>i</em> <em>u</em> <del>s</del> <code>c</code></p>"),
    ("***both***", "<p><strong><em>both</em></strong></p>"),
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    ("**not closed", "<p>**not closed</p>"),
    ("line one\nline two", "<p>line one<br>line two</p>"),
    ("a\n\nb", "<p>a</p><p>b</p>"),
    ("# One\n###### Six", "<h3>One</h3><h6>Six</h6>"),
    ("#hashtag", "<p>#hashtag</p>"),
    ("- a\n- b\n  - c", "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul>"),
    ("3. x\n4. y", '<ol start="3"><li>x</li><li>y</li></ol>'),
    ("It was\n2024. A good year", "<p>It was<br>2024. A good year</p>"),
    ("Steps:\n1. one", "<p>Steps:</p><ol><li>one</li></ol>"),
    ("> quoted\n> more", "<blockquote><p>quoted<br>more</p></blockquote>"),
    ("---", "<hr>"),
    (
        "```js\nconst a = '<b>';\n```",
        '<pre data-language="js"><span class="code-language">js</span><code>const a = \'&lt;b&gt;\';</code></pre>',
    ),
    ("```\nunterminated\n<i>", "<pre><code>unterminated\n&lt;i&gt;</code></pre>"),
    ("`` a ` b ``", "<p><code>a ` b</code></p>"),
    ("\\*not em\\*", "<p>*not em*</p>"),
    (
        "[site](https://example.com/a_(b)) and <https://x.example/y>",
        '<p><a href="https://example.com/a_(b)" rel="noopener noreferrer nofollow" target="_blank">site</a>'
        ' and <a href="https://x.example/y" rel="noopener noreferrer nofollow" target="_blank">'
        "https://x.example/y</a></p>",
    ),
    (
        "see https://example.com/path, then stop.",
        '<p>see <a href="https://example.com/path" rel="noopener noreferrer nofollow" target="_blank">'
        "https://example.com/path</a>, then stop.</p>",
    ),
    (
        "[mail](mailto:someone@example.com)",
        '<p><a href="mailto:someone@example.com" rel="noopener noreferrer nofollow" target="_blank">mail</a></p>',
    ),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("[x](  JAVASCRIPT:alert(1))", "<p>[x](  JAVASCRIPT:alert(1))</p>"),
    ("[x](<java\tscript:alert(1)>)", "<p>[x](&lt;java\tscript:alert(1)&gt;)</p>"),
    ("[x](vbscript:msgbox(1))", "<p>[x](vbscript:msgbox(1))</p>"),
    ("[x](data:text/html;base64,PHNjcmlwdD4=)", "<p>[x](data:text/html;base64,PHNjcmlwdD4=)</p>"),
    ("[x](/relative/path)", "<p>[x](/relative/path)</p>"),
    ("[x](//evil.example/)", "<p>[x](//evil.example/)</p>"),
    (
        "![a cat](https://example.com/cat.png)",
        '<p><a href="https://example.com/cat.png" rel="noopener noreferrer nofollow" target="_blank" '
        'class="image-link">a cat (image)</a></p>',
    ),
    ("<b>raw</b> &amp; <!-- c -->", "<p>&lt;b&gt;raw&lt;/b&gt; &amp;amp; &lt;!-- c --&gt;</p>"),
    (
        "| a | b |\n|:--|--:|\n| 1 | 2 |",
        '<div class="table-scroll"><table><thead><tr><th class="align-left">a</th>'
        '<th class="align-right">b</th></tr></thead><tbody><tr><td class="align-left">1</td>'
        '<td class="align-right">2</td></tr></tbody></table></div>',
    ),
]


def test_markdown_renderer_cases_and_hostile_input(web_server: WebServerFactory, open_page: OpenPage) -> None:
    server = web_server(ScriptedProvider())
    chat = open_page(server)
    results = chat.page.evaluate(
        """async (cases) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            return cases.map(([source]) => {
                const box = document.createElement('div');
                box.append(renderMarkdown(source));
                return box.innerHTML;  // reading the serialisation back is how the test compares trees
            });
        }""",
        MARKDOWN_CASES,
    )
    for (source, expected), actual in zip(MARKDOWN_CASES, results, strict=True):
        assert actual == expected, f"renderMarkdown({source!r})"

    # Pathological input (unclosed delimiters, deep nesting) renders in bounded time.
    elapsed = chat.page.evaluate(
        """async () => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const inputs = [
                '*a '.repeat(20000),
                '_a '.repeat(20000),
                '['.repeat(20000) + 'x',
                '`'.repeat(5000) + ' x ' + '``'.repeat(5000),
                '> '.repeat(5000) + 'deep',
                '- '.repeat(3000) + 'deep',
                'https://example.com/' + '('.repeat(5000),
                ('word **bold** `code` [l](https://e.x) ' + 'x'.repeat(60) + '\\n').repeat(2000),
            ];
            const started = performance.now();
            for (const input of inputs) document.createElement('div').append(renderMarkdown(input));
            return performance.now() - started;
        }"""
    )
    assert elapsed < 3000, f"rendering took {elapsed:.0f} ms"


def test_sse_parser_and_retry_after(web_server: WebServerFactory, open_page: OpenPage) -> None:
    server = web_server(ScriptedProvider())
    chat = open_page(server)
    result = chat.page.evaluate(
        """async () => {
            const { readEvents } = await import('/static/sse.js');
            const { parseRetryAfter } = await import('/static/api.js');
            const encoder = new TextEncoder();
            const body = (chunks) => new ReadableStream({
                start(controller) {
                    for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
                    controller.close();
                },
            });
            const collect = async (chunks) => {
                const events = [];
                const comments = [];
                for await (const e of readEvents(body(chunks), { onComment: (c) => comments.push(c) })) events.push(e);
                return { events, comments };
            };
            const whole = 'id: 1-0\\nevent: message_start\\ndata: {"a":1}\\n\\n: ping\\n\\n'
                + 'id: 1-1\\r\\nevent: content_delta\\r\\ndata: line1\\r\\ndata: line2\\r\\n\\r\\n'
                + 'data:no-space\\rid\\r\\r'
                + 'event: done\\ndata: {}\\n\\nevent: lost\\ndata: never dispatched';
            // Every way of splitting the bytes gives the same events, including CR|LF splits.
            const reference = await collect([whole]);
            let consistent = true;
            for (let cut = 1; cut < whole.length; cut++) {
                const split = await collect([whole.slice(0, cut), whole.slice(cut)]);
                if (JSON.stringify(split) !== JSON.stringify(reference)) consistent = false;
            }
            const bytewise = await collect(whole.split(''));
            // Multi-byte characters split between chunks survive.
            const snowman = encoder.encode('data: ☃\\n\\n');
            const events = [];
            const utf8 = new ReadableStream({
                start(c) { c.enqueue(snowman.slice(0, 7)); c.enqueue(snowman.slice(7)); c.close(); },
            });
            for await (const e of readEvents(utf8)) events.push(e.data);
            return {
                reference,
                consistent,
                bytewiseSame: JSON.stringify(bytewise) === JSON.stringify(reference),
                snowman: events,
                retry: [parseRetryAfter('30'), parseRetryAfter(null), parseRetryAfter('soon'),
                        parseRetryAfter(new Date(Date.now() + 90000).toUTCString())],
            };
        }"""
    )
    assert result["reference"]["events"] == [
        {"id": "1-0", "event": "message_start", "data": '{"a":1}'},
        {"id": "1-1", "event": "content_delta", "data": "line1\nline2"},
        {"id": "", "event": "message", "data": "no-space"},
        {"id": "", "event": "done", "data": "{}"},
    ]
    assert result["reference"]["comments"] == ["ping"]
    assert result["consistent"]
    assert result["bytewiseSame"]
    assert result["snowman"] == ["☃"]
    retry = result["retry"]
    assert retry[:3] == [30, None, None]
    assert 85 <= retry[3] <= 91


def _hostile_long_reply() -> list[str]:
    """About 130 KB of Markdown built to be slow, between ordinary blocks, in 1 KB deltas."""
    parts = [
        "Some ordinary **text** first, with a [link](https://example.com/start).\n\n",
        "# a" + " " * 40_000 + "x!\n\n",
        "- a list\n- of items\n\n",
        "[" * 20_000 + "]\n\n",
        "(https://[" * 3_000 + "\n\n",
        "*a " * 5_000 + "\n\n",
        "```\n" + ("```" + " " * 500 + "x\n") * 40 + "```\n\n",
        "`` a " + "`" * 5_000 + "\n\n",
        "The end, with a [link](https://example.com/end).",
    ]
    text = "".join(parts)
    return [text[at : at + 1000] for at in range(0, len(text), 1000)]


def test_a_long_hostile_reply_streams_without_freezing_the_page(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    tokens = _hostile_long_reply()
    server = web_server(ScriptedProvider(Reply(tokens=tokens, delay=0.005)))
    chat = open_page(server).sign_in(tenants.a1)
    # A timer that should fire every 20 ms records how late it ever was: the page's main thread
    # was busy for that long at a stretch. And the reply's first paragraph, once later blocks
    # follow it, is kept: a finished block is not rendered again.
    chat.page.evaluate(
        """() => {
            window.__longestStall = 0;
            let last = performance.now();
            window.__stallTimer = setInterval(() => {
                const now = performance.now();
                window.__longestStall = Math.max(window.__longestStall, now - last - 20);
                last = now;
            }, 20);
            window.__firstBlock = null;
            new MutationObserver(() => {
                const replies = document.querySelectorAll('article.message.assistant .content');
                const reply = replies[replies.length - 1];
                if (window.__firstBlock || !reply || reply.children.length < 3) return;
                window.__firstBlock = reply.firstElementChild;
            }).observe(document.querySelector('#messages'), { childList: true, subtree: true });
        }"""
    )
    chat.send("Say something long")
    chat.wait_for_turn_end(timeout=60_000)
    stall = chat.page.evaluate("() => { clearInterval(window.__stallTimer); return window.__longestStall; }")
    assert stall < 500, f"the page stalled for {stall:.0f} ms while the reply streamed"
    kept = chat.page.evaluate(
        """() => window.__firstBlock !== null && window.__firstBlock.isConnected
            && window.__firstBlock.textContent.startsWith('Some ordinary text first')"""
    )
    assert kept, "the reply's first paragraph was rendered again after later blocks followed it"

    # What streamed is exactly what rendering the whole reply at once makes.
    same = chat.page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const box = document.createElement('div');
            box.append(renderMarkdown(text));
            const shown = document.querySelectorAll('article.message.assistant .content');
            return box.innerHTML === shown[shown.length - 1].innerHTML;  // comparing serialisations of two trees
        }""",
        "".join(tokens),
    )
    assert same, "the streamed reply differs from a full render of it"
    found = chat.page.evaluate(INERT_CHECK)
    assert found["risky"] == [], found
    assert found["handlers"] == 0, found
    assert found["images"] == 0, found
    assert set(found["links"]) == {"https://example.com/start", "https://example.com/end"}, found


def test_a_long_table_streams_while_the_page_stays_responsive(
    web_server: WebServerFactory, tenants: Tenants, open_page: OpenPage
) -> None:
    # A table is one block, rendered again as each row arrives; a big one costs the browser
    # hundreds of milliseconds of layout each time.
    header = "| " + " | ".join(f"c{n}" for n in range(8)) + " |\n" + "|---" * 8 + "|\n"
    rows = ["| " + " | ".join(f"r{row}c{n} *x*" for n in range(8)) + " |\n" for row in range(3000)]
    # The table is about 333,000 characters: past the default cap on a reply's size (200,000,
    # reply_too_large), which would end the turn at row 1832. The cap is raised so that the whole
    # table streams, which is what is measured here.
    size = len(header) + sum(map(len, rows))
    server = web_server(
        ScriptedProvider(Reply(tokens=[header, *rows], delay=0.002, per_read=2)),
        PARLEY_MAX_REPLY_CHARS=str(2 * size),
    )
    chat = open_page(server).sign_in(tenants.a1)
    chat.page.evaluate(
        """() => {
            window.__ticks = 0;
            window.__ticker = setInterval(() => { window.__ticks++; }, 10);
            window.__started = performance.now();
        }"""
    )
    chat.send("A long table please")
    chat.wait_for_turn_end(timeout=60_000)
    ticks, expected = chat.page.evaluate(
        """() => {
            clearInterval(window.__ticker);
            return [window.__ticks, (performance.now() - window.__started) / 10];
        }"""
    )
    # A 10 ms timer fires at least a fifth of the times it should: the main thread keeps time
    # for the user while the table grows.
    assert ticks >= 0.2 * expected, f"a 10 ms timer fired {ticks} times in {expected * 10:.0f} ms"
    # The turn ended as the reply did, not on an error (which would leave a shorter table).
    assert chat.banner.is_hidden(), chat.banner.text_content()
    assert chat.page.locator("article.message.assistant .status").is_hidden()
    assert chat.page.locator("article.message.assistant tbody tr").count() == 3000
