"""Two parley source trees on the same load, runs alternated: is a change worth keeping?

The machines are shared and one run's noise is often larger than a change's effect, so each tree
runs the load `--runs` times, in alternation (A B, B A, A B, ...), against one upstream and one
database, and the medians are compared. Besides the loads of `make bench`, `wave` is one wave of
100 paced streams released together (the first wave of `paced100`, which sets its p99).

    python -m bench.ab SRC_A SRC_B [--load wave|saturation|short|paced100|paced500] [--runs 8] [--scale 0.3]

SRC_* are directories that hold the `parley` package (for example a `git worktree` at another
commit, plus `/src`). Prints the median TTFT p50/p99, server CPU per turn and tokens/s of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import ExitStack
from typing import Any

from bench.loads import LOADS, Load
from bench.run import Bench, _workdir

WAVE = Load("wave", "one wave of 100 paced streams released together", 32, 0.02, 0.02, 100, 100, 10, 30)


def _figures(result: dict[str, Any], load: Load) -> tuple[float, float, float, float]:
    turns = max(1, result.get("turns", load.turns))
    return (result["ttft_p50_ms"], result["ttft_p99_ms"], 1000 * result["server_cpu_s"] / turns, result["tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src_a")
    parser.add_argument("src_b")
    parser.add_argument("--load", default="wave", choices=["wave", *(load.key for load in LOADS)])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--scale", type=float, default=0.3, help="multiplies the turn counts of make bench's loads")
    args = parser.parse_args()
    load = WAVE if args.load == "wave" else next(load for load in LOADS if load.key == args.load)
    figures: dict[str, list[tuple[float, float, float, float]]] = {"A": [], "B": []}
    with _workdir() as workdir, ExitStack() as stack:
        bench = Bench(workdir, stack, args.scale)
        bench.seed()
        saved = os.environ.get("PYTHONPATH")
        for name, src in (("A", args.src_a), ("B", args.src_b)):
            os.environ["PYTHONPATH"] = src  # inherited by the server's process
            bench.start_parley(name)
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
        bench.shape(tokens=load.tokens, delay=load.delay, first_delay=load.first_delay, usage=True)
        for run in range(args.runs):
            for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
                figures[name].append(_figures(bench.run_load(name, load), load))
    for name, src in (("A", args.src_a), ("B", args.src_b)):
        rows = figures[name]
        p50, p99, cpu, tokens = (statistics.median(row[i] for row in rows) for i in range(4))
        print(
            f"{name} {src}: TTFT p50 {p50:.1f} ms, p99 {p99:.1f} ms; server CPU {cpu:.2f} ms/turn; "
            f"{tokens:,.0f} tokens/s  (p99 of each run: {', '.join(f'{row[1]:.0f}' for row in rows)})"
        )


if __name__ == "__main__":
    main()
