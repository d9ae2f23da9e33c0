"""The page's Markdown renderer run in Node.js: bounded time on hostile input, and a streamed
render that equals a full one while leaving finished blocks alone.

Node runs the very files the page serves (ES modules, no build step) with a small fake DOM from
tests/web/node/fake_dom.mjs; the browser tests run the same modules in Chromium.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).resolve().parents[2] / "src" / "parley" / "web" / "static"
NODE_SCRIPTS = Path(__file__).resolve().parent / "node"
BOUND_MS = 250  # for about 200 KB of input: linear work takes a fraction of it, quadratic work seconds
NODE_TIMEOUT_S = 45  # below the test's own timeout, so a render that never ends is named


def run_node(script: str, *args: str) -> list[dict[str, Any]]:
    """Run a script of tests/web/node and return the JSON lines it printed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js is not installed: run `apt-get install -y nodejs` (Debian's package; "
            "`make system-deps` installs it). The Markdown renderer's timing tests run in it.",
            pytrace=False,
        )
    # One thread, so the CPU time a script measures is the renderer's own (no background
    # compiler or collector threads), and gc() exposed, so each timed render starts clean.
    command = [node, "--single-threaded", "--expose-gc", str(NODE_SCRIPTS / script), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
    else:
        assert done.returncode == 0, f"{script} failed:\n{done.stderr}"
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    printed = "".join(f"\n  {line}" for line in partial.splitlines())
    pytest.fail(f"{script} did not finish in {NODE_TIMEOUT_S} s; it printed:{printed}", pytrace=False)


def test_markdown_renders_hostile_input_in_bounded_time() -> None:
    lines = run_node("render_timing.mjs", str(STATIC / "markdown.js"), str(BOUND_MS))
    results = [line for line in lines if "ms" in line]
    assert len(results) == len([line for line in lines if "started" in line]) > 70
    assert any(r["name"] == "heading: # a, 40,000 spaces, x!" for r in results)
    assert sum(r["name"].startswith("random:") for r in results) == 30
    assert all(r["length"] >= 20_000 for r in results)
    slow = [f"{r['name']} ({r['length']:,} characters): {r['ms']} ms" for r in results if r["ms"] >= BOUND_MS]
    assert not slow, "rendering took too long:\n" + "\n".join(slow)


def test_streamed_markdown_equals_a_full_render_and_leaves_finished_blocks_alone() -> None:
    same, open_text = run_node("streaming_check.mjs", str(STATIC / "markdown.js"))
    assert same["check"] == "same as a full render"
    assert same["mismatches"] == []
    assert same["renders"] > 20_000
    assert same["touched"] == 0, "nodes of finished blocks were replaced"
    assert same["finishedBlocks"] > 1_000  # blocks were finished and left alone, not all re-rendered
    # Each render of a long reply parses a short open end, not everything received so far.
    assert open_text["check"] == "open text"
    assert open_text["renders"] > 1_000
    assert open_text["longestOpen"] < 300 < open_text["length"] / 100
