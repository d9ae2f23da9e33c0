"""The browser chat page: serves `/` (index.html) and `/static/{path}` from this package.

The page is static HTML, CSS and ES modules under `parley/web/static/` that use only the public
HTTP API; nothing is built or fetched from elsewhere. `mount_web(app)` adds the two routes and a
small ASGI middleware that puts the security headers on every response: the strict
Content-Security-Policy only on the page and its files (FastAPI's /docs loads Swagger UI from a
CDN with an inline script, which that policy would break), `nosniff` and `no-referrer` on all.

Files are read once, when `mount_web` runs, into an in-memory table keyed by their relative
path: a request can only ever name a file that was in the package at start-up (no path
traversal, no symlink surprises), and each file carries a strong ETag so browsers revalidate
cheaply. Restart the server to pick up edited files.

Imports: hashlib, importlib.resources, starlette/fastapi only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COMMON_HEADERS", "CONTENT_SECURITY_POLICY", "mount_web"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# Headers every response gets (unless a route already set them).
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_COMMON_HEADERS = tuple((name.lower().encode(), value.encode()) for name, value in COMMON_HEADERS.items())

# Headers of the page and its files only.
_PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

# Only these kinds of files are served; anything else in the folder stays private.
_CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}

# No fingerprinted file names (there is no build step), so caches must revalidate every time;
# the strong ETag makes that a 304 without a body.
_CACHE_CONTROL = "no-cache"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the page, held in memory."""

    body: bytes
    content_type: str
    etag: str


def _walk(folder: Traversable, prefix: str = "") -> dict[str, StaticFile]:
    files: dict[str, StaticFile] = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith((".", "_")):
            continue
        rel = f"{prefix}{name}"
        if entry.is_dir():
            files.update(_walk(entry, f"{rel}/"))
            continue
        suffix = name[name.rfind(".") :].lower() if "." in name else ""
        content_type = _CONTENT_TYPES.get(suffix)
        if content_type is None or not entry.is_file():
            continue
        body = entry.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        files[rel] = StaticFile(body=body, content_type=content_type, etag=f'"{digest}"')
    return files


def load_static_files() -> dict[str, StaticFile]:
    """Every servable file under parley/web/static, by relative path with `/` separators."""
    root = resources.files(__name__).joinpath("static")
    if not root.is_dir():
        raise RuntimeError("parley/web/static is missing from the installed package")
    files = _walk(root)
    if "index.html" not in files:
        raise RuntimeError("parley/web/static/index.html is missing from the installed package")
    return files


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = (part.strip().removeprefix("W/") for part in header.split(","))
    return etag in candidates


def _file_response(request: Request, file: StaticFile) -> Response:
    headers = {**_PAGE_HEADERS, "Cache-Control": _CACHE_CONTROL, "ETag": file.etag}
    if _etag_matches(request.headers.get("if-none-match"), file.etag):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else file.body
    response = Response(body, media_type=file.content_type, headers=headers)
    if request.method == "HEAD":
        response.headers["content-length"] = str(len(file.body))
    return response


class CommonSecurityHeaders:
    """Adds `nosniff` and `no-referrer` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in _COMMON_HEADERS if pair[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_web(app: FastAPI) -> None:
    """Serve the chat page at `/` and its files at `/static/{path}`, with the security headers."""
    files = load_static_files()
    index = files["index.html"]

    async def page(request: Request) -> Response:
        return _file_response(request, index)

    async def static(request: Request, path: str) -> Response:
        file = files.get(path)
        if file is None:
            raise HTTPException(status_code=404, detail="Not found.")
        return _file_response(request, file)

    app.add_api_route("/", page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/static/{path:path}", static, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_middleware(CommonSecurityHeaders)
