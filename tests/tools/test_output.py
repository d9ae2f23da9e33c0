"""Tool results as text: joined contents, placeholders, and both caps cut between characters."""

from __future__ import annotations

import base64

import pytest
from mcp import types

from parley.tools.output import MODEL_LIMIT, cap_utf8, error_output, for_model, result_output, result_text

URI = "file:///reports/q1.txt"


def result(
    *content: types.ContentBlock, structured: dict[str, object] | None = None, error: bool = False
) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), structuredContent=structured, isError=error)


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def test_text_contents_are_joined_line_by_line() -> None:
    assert result_text(result(text("one"), text("two"))) == "one\ntwo"
    assert result_text(result()) == ""


def test_structured_content_stands_in_when_there_is_no_text() -> None:
    assert result_text(result(structured={"a": 1, "b": ["é", None]})) == '{"a":1,"b":["é",null]}'
    assert result_text(result(text("x"), structured={"a": 1})) == "x"


def test_media_and_resources_become_placeholders() -> None:
    png = base64.b64encode(b"\0" * 12 * 1024).decode()
    wav = base64.b64encode(b"\0" * 100).decode()
    blocks: list[types.ContentBlock] = [
        text("see:"),
        types.ImageContent(type="image", data=png, mimeType="image/png"),
        types.AudioContent(type="audio", data=wav, mimeType="audio/wav"),
        types.EmbeddedResource(
            type="resource", resource=types.TextResourceContents(uri=URI, mimeType="text/plain", text="é" * 1024)
        ),
        types.EmbeddedResource(
            type="resource", resource=types.BlobResourceContents(uri=URI, blob=base64.b64encode(b"1").decode())
        ),
        types.ResourceLink(type="resource_link", uri=URI, name="q1"),
    ]
    assert result_text(result(*blocks)).split("\n") == [
        "see:",
        "[image: image/png, 12 KB]",
        "[audio: audio/wav, 100 bytes]",
        f"[resource: {URI}, text/plain, 2 KB]",
        f"[resource: {URI}, binary, 1 bytes]",
        f"[resource link: q1 {URI}]",
    ]


def test_a_tool_error_is_an_error_output() -> None:
    output = result_output(result(text("no such file"), error=True), max_bytes=4096, duration_ms=7)
    assert (output.text, output.is_error, output.truncated, output.duration_ms) == ("no such file", True, False, 7)
    assert error_output("down", duration_ms=3) == type(output)("down", True, False, 3)


def test_a_short_text_is_not_cut() -> None:
    assert cap_utf8("é" * 100, 200) == ("é" * 100, False)
    assert cap_utf8("a" * 1024, 1024) == ("a" * 1024, False)


@pytest.mark.parametrize("character", ["é", "€", "😀"])
def test_cuts_fall_between_characters_at_every_boundary(character: str) -> None:
    size = len(character.encode())
    for limit in range(1024, 1024 + 2 * size + 1):
        capped, cut = cap_utf8("a" * 500 + character * 2000, limit)
        assert cut
        encoded = capped.encode()
        assert len(encoded) <= limit
        assert len(encoded) > limit - size  # as much as fits
        head, _, marker = capped.rpartition("\n")
        assert head.replace("a", "").replace(character, "") == ""
        assert marker.startswith("[… output truncated: ")


def test_the_stored_and_the_model_caps() -> None:
    big = "ü" * 200_000  # 400,000 bytes
    output = result_output(result(text(big)), max_bytes=262144, duration_ms=1)
    assert len(output.text.encode()) <= 262144
    assert output.text.endswith("\n[… output truncated: 390 KB, showing the first 256 KB]")
    assert output.truncated
    model = for_model(output.text)
    assert len(model.encode()) <= MODEL_LIMIT
    assert model.endswith("\n[… output truncated: 255 KB, showing the first 32 KB]")  # of what is stored
    assert big.startswith(model.rpartition("\n")[0])
    medium = "x" * 40_000
    output = result_output(result(text(medium)), max_bytes=262144, duration_ms=1)
    assert output.text == medium
    assert output.truncated
    huge = "x" * 3_000_000
    assert cap_utf8(huge, 4096)[0].endswith("[… output truncated: 2.9 MB, showing the first 4 KB]")


def test_the_model_never_gets_more_than_is_stored() -> None:
    output = result_output(result(text("y" * 10_000)), max_bytes=2048, duration_ms=1)
    assert for_model(output.text) == output.text
    assert len(output.text.encode()) <= 2048
    assert output.truncated
