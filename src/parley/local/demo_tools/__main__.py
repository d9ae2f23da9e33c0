"""`python -m parley.local.demo_tools --data-dir DIR`: the demo tool server on stdin and stdout.

The data directory comes from `--data-dir`, else from `PARLEY_DEMO_TOOLS_DIR`; it is made if
missing. Diagnostics go to stderr, since stdout carries the protocol.

May import: the standard library, anyio and parley.local.demo_tools.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import anyio

from parley.local.demo_tools.server import serve_stdio

DATA_DIR_VARIABLE = "PARLEY_DEMO_TOOLS_DIR"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m parley.local.demo_tools",
        description="parley's demo MCP server (stdio): the time, a calculator and notes.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help=f"where the notes file is kept (default: ${DATA_DIR_VARIABLE})",
    )
    arguments = parser.parse_args(argv)
    data_dir: Path | None = arguments.data_dir
    if data_dir is None and os.environ.get(DATA_DIR_VARIABLE):
        data_dir = Path(os.environ[DATA_DIR_VARIABLE])
    if data_dir is None:
        parser.error(f"give --data-dir DIR or set {DATA_DIR_VARIABLE}")
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"cannot make the data directory {data_dir}: {exc.strerror or exc}")

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="parley-demo: %(levelname)s %(message)s")
    anyio.run(serve_stdio, data_dir)


if __name__ == "__main__":
    main()
