"""The page and its files over HTTP: security headers, content types, caching, and what is never served.

Also reads the shipped sources: no inline script or style, and no JavaScript that parses HTML.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx2

from parley.web import CONTENT_SECURITY_POLICY
from tests.support.scripted_provider import ScriptedProvider
from tests.web.conftest import WebServerFactory

STATIC = Path(__file__).resolve().parents[2] / "src" / "parley" / "web" / "static"

EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _assert_page_headers(response: httpx2.Response) -> None:
    assert response.headers["content-security-policy"] == EXPECTED_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in response.headers


def test_page_and_files_carry_the_security_headers(web_server: WebServerFactory) -> None:
    server = web_server(ScriptedProvider())
    assert CONTENT_SECURITY_POLICY == EXPECTED_CSP
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        page = http.get("/", headers={"Origin": "https://elsewhere.example"})
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        _assert_page_headers(page)
        assert '<script type="module" src="/static/app.js"></script>' in page.text

        expected_types = {  # text/javascript: RFC 9239
            "app.js": "text/javascript; charset=utf-8",
            "api.js": "text/javascript; charset=utf-8",
            "sse.js": "text/javascript; charset=utf-8",
            "markdown.js": "text/javascript; charset=utf-8",
            "ui.js": "text/javascript; charset=utf-8",
            "style.css": "text/css; charset=utf-8",
            "favicon.svg": "image/svg+xml",
        }
        for name, content_type in expected_types.items():
            response = http.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"] == content_type, name
            _assert_page_headers(response)
            assert response.content == (STATIC / name).read_bytes(), name

        # Revalidation: the strong ETag answers 304 without a body.
        first = http.get("/static/app.js")
        etag = first.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        again = http.get("/static/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        changed = http.get("/static/app.js", headers={"If-None-Match": '"something-else"'})
        assert changed.status_code == 200

        head = http.head("/static/app.js")
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) == len(first.content)


def test_nothing_outside_the_static_files_is_served(web_server: WebServerFactory) -> None:
    server = web_server(ScriptedProvider())
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        for path in (
            "/static/",
            "/static/missing.js",
            "/static/__init__.py",
            "/static/../__init__.py",
            "/static/%2e%2e/__init__.py",
            "/static/..%2F__init__.py",
            "/static//etc/passwd",
        ):
            response = http.get(path)
            assert response.status_code == 404, path
            assert response.json()["code"] == "not_found", path
            assert response.headers["x-content-type-options"] == "nosniff", path


def test_api_keeps_its_headers_and_docs_still_work(web_server: WebServerFactory) -> None:
    server = web_server(ScriptedProvider())
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        health = http.get("/healthz", headers={"Origin": "https://elsewhere.example"})
        assert health.status_code == 200
        assert health.headers["x-content-type-options"] == "nosniff"
        assert health.headers["referrer-policy"] == "no-referrer"
        assert "content-security-policy" not in health.headers
        assert "access-control-allow-origin" not in health.headers

        unauthorized = http.get("/api/v1/ai/sessions")
        assert unauthorized.status_code == 401
        assert unauthorized.headers["x-content-type-options"] == "nosniff"

        preflight = http.options(
            "/api/v1/ai/sessions",
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers

        # Swagger UI loads from a CDN with an inline script: the page's CSP must not reach it.
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "swagger-ui" in docs.text
        assert "content-security-policy" not in docs.headers
        schema = http.get("/openapi.json")
        assert schema.status_code == 200
        paths = schema.json()["paths"]
        assert "/" not in paths
        assert not any(p.startswith("/static") for p in paths)


def test_page_sources_have_no_inline_code_and_never_parse_html() -> None:
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> in index.html"
    assert "<style" not in html
    assert not re.search(r"\sstyle=", html), "inline style attribute in index.html"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler in index.html"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "a file from another origin in index.html"

    scripts = sorted(STATIC.glob("*.js"))
    assert {p.name for p in scripts} >= {"app.js", "api.js", "sse.js", "markdown.js", "ui.js"}
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|createContextualFragment"
        r"|\beval\s*\(|new\s+Function|setAttribute\(\s*['\"]style|\.style\.|javascript:"
    )
    for script in scripts:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("//", 1)[0] if not line.lstrip().startswith("*") else ""
            assert not forbidden.search(code), f"{script.name}:{number}: {line.strip()}"
        assert not re.search(r"\bimport\s[^;]*from\s+['\"](?!\./)", script.read_text()), (
            f"{script.name} imports something that is not one of the page's own modules"
        )
