"""A tool call's result as parley keeps it: text for people and the database, cut at the server's
byte limit without splitting a character and marked when cut. The model reads at most
MODEL_LIMIT bytes of it (`for_model`, applied where results are replayed: chat/history.py).

Text contents are joined; structured content stands in as compact JSON when there is no text;
images, audio and resources become short placeholders (`[image: image/png, 12 KB]`).

Imports: standard library, mcp.types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mcp import types

MODEL_LIMIT = 32 * 1024  # bytes of a result a model gets


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What a call gave back (or why it gave nothing)."""

    text: str  # stored and shown: at most the server's maxOutputBytes of UTF-8, marked when cut
    is_error: bool
    truncated: bool  # the model does not get all of it (see `for_model`)
    duration_ms: int


def result_output(result: types.CallToolResult, *, max_bytes: int, duration_ms: int) -> ToolOutput:
    full = result_text(result)
    text, cut = cap_utf8(full, max_bytes)
    truncated = cut or len(text.encode()) > MODEL_LIMIT
    return ToolOutput(text=text, is_error=result.isError, truncated=truncated, duration_ms=duration_ms)


def error_output(message: str, *, duration_ms: int) -> ToolOutput:
    """A call that failed before or outside the tool: the reason, for people and the model alike."""
    return ToolOutput(text=message, is_error=True, truncated=False, duration_ms=duration_ms)


def for_model(text: str) -> str:
    """What the model reads of a stored result: at most MODEL_LIMIT bytes, marked when cut."""
    return cap_utf8(text, MODEL_LIMIT)[0]


def result_text(result: types.CallToolResult) -> str:
    texts = [text for block in result.content if (text := _block_text(block)) is not None]
    if (
        not any(isinstance(block, types.TextContent) for block in result.content)
        and result.structuredContent is not None
    ):
        structured = json.dumps(result.structuredContent, separators=(",", ":"), ensure_ascii=False)
        texts.insert(0, structured)
    return "\n".join(texts)


def _block_text(block: types.ContentBlock) -> str | None:
    match block:
        case types.TextContent(text=text):
            return text
        case types.ImageContent(mimeType=mime, data=data):
            return f"[image: {mime}, {_size(_base64_bytes(data))}]"
        case types.AudioContent(mimeType=mime, data=data):
            return f"[audio: {mime}, {_size(_base64_bytes(data))}]"
        case types.EmbeddedResource(resource=types.TextResourceContents(uri=uri, mimeType=mime, text=text)):
            return f"[resource: {uri}, {mime or 'text'}, {_size(len(text.encode()))}]"
        case types.EmbeddedResource(resource=types.BlobResourceContents(uri=uri, mimeType=mime, blob=blob)):
            return f"[resource: {uri}, {mime or 'binary'}, {_size(_base64_bytes(blob))}]"
        case types.ResourceLink(uri=uri, name=name):
            return f"[resource link: {name} {uri}]"
    return None  # a content type this SDK does not know (it validates what it reads, so none yet)


def _base64_bytes(data: str) -> int:
    data = data.strip()
    return max(0, len(data) * 3 // 4 - data[-2:].count("="))


def cap_utf8(text: str, limit: int) -> tuple[str, bool]:
    """`text` if its UTF-8 fits in `limit` bytes; else its longest head that fits with the marker
    after it, cut between characters. The second value says whether it was cut."""
    if len(text) * 4 <= limit:  # fits whatever the characters
        return text, False
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, False
    marker = f"\n[… output truncated: {_size(len(encoded))}, showing the first {_size(limit)}]"
    shown = limit - len(marker.encode())
    while shown > 0 and encoded[shown] & 0xC0 == 0x80:  # a continuation byte: back to a boundary
        shown -= 1
    return encoded[:shown].decode() + marker, True


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    if count < 1024 * 1024:
        return f"{count // 1024} KB"
    return f"{count / (1024 * 1024):.1f} MB"
