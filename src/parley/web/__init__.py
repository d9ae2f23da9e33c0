"""The browser pages: the chat at `/` (index.html), the review of flagged conversations at
`/admin` (admin.html, for admin tokens), and their files at `/static/{path}`, from this package.

The page is static HTML, CSS and ES modules under `parley/web/static/` that use only the public
HTTP API; nothing is built or fetched from elsewhere. Starlette's `StaticFiles` serves them (path
safety, ETags, conditional requests, HEAD), with the page's headers added: the strict
Content-Security-Policy only on the page and its files (FastAPI's /docs loads Swagger UI from a
CDN with an inline script, which that policy would break), and `no-cache`, so browsers revalidate
every time (there are no fingerprinted file names) and an unchanged file costs a 304. `nosniff`
and `no-referrer` (`COMMON_HEADERS`) go on every response of the app: the outermost middleware
puts them there with the request id (`api/request_context.py`), one layer for every answer.

Imports: starlette/fastapi only.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

__all__ = ["COMMON_HEADERS", "CONTENT_SECURITY_POLICY", "mount_web"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# Headers every response gets (unless a route already set them).
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

# Headers of the page and its files only.
_PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cache-Control": "no-cache",
}


class PageFiles(StaticFiles):
    """The page's files, with the page's headers on every answer (304s included)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_PAGE_HEADERS)
        return response


def mount_web(app: FastAPI) -> None:
    """Serve the chat page at `/`, the review page at `/admin` and their files at `/static/{path}`,
    with the security headers."""
    files = PageFiles(packages=[("parley.web", "static")])

    async def page(request: Request) -> Response:
        return await files.get_response("index.html", request.scope)

    async def review_page(request: Request) -> Response:
        return await files.get_response("admin.html", request.scope)

    app.add_api_route("/", page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/admin", review_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/static", files, name="static")
