"""The configuration of parley's demo tool server (`parley.local.demo_tools`), for `parley demo`.

The server is trusted (its annotations are honest: see `parley.local.demo_tools.tools`) and its
rule is `destructive`, so the read-only tools (now, calculate, list_notes, search_notes) run
without asking and `add_note` asks, whatever the session's approval mode.

Imports: the standard library only (the server runs as a child process, not as an import).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# The directory that holds this `parley` package: the child imports the same parley as its parent.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def demo_config(data_dir: Path) -> dict[str, Any]:
    """A `PARLEY_MCP_CONFIG` document (JSON-ready) with the demo tool server as `demo`, keeping its
    notes in `data_dir`."""
    return {
        "mcpServers": {
            "demo": {
                "command": sys.executable,
                "args": ["-m", "parley.local.demo_tools", "--data-dir", str(data_dir)],
                "env": {"PYTHONPATH": str(_SOURCE_ROOT)},
                "description": "parley's demo tools: the time, a calculator, notes",
                "trusted": True,
                "requireApproval": "destructive",
                "timeoutSeconds": 30,
            }
        }
    }
