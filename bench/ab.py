"""Two parley source trees on the same load, runs alternated: is a change worth keeping?

The machines are shared and one run's noise is often larger than a change's effect, so each tree
runs the load `--runs` times, in alternation (A B, B A, A B, ...), against one upstream and one
database, and the medians are compared. Besides the loads of `make bench`, `wave` is one wave of
100 paced streams released together (the first wave of `paced100`, which sets its p99).

    python -m bench.ab SRC_A SRC_B [--load wave|saturation|short|paced100|paced500] [--runs 8] [--scale 0.3]
                                   [--database sqlite|postgres] [--redis] [--workers 1]

SRC_* are directories that hold the `parley` package (for example a `git worktree` at another
commit, plus `/src`). `--database postgres` serves both from one database of a throwaway cluster
(as the application role, as `make bench`'s parley-pg), `--redis` relays their turns through a
throwaway Redis, `--workers` runs that many server processes each. Both trees must agree on the
schema: the database is migrated once, by this tree. Prints the median TTFT p50/p99, server CPU
per turn and tokens/s of each, and on PostgreSQL or Redis what they cost per turn too; on PostgreSQL
also each tree's most-called statements with their mean time in the server (lock waits included).
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import ExitStack
from typing import Any

from bench.loads import LOADS, Load
from bench.run import Bench, _workdir
from bench.targets import ParleyTarget

WAVE = Load("wave", "one wave of 100 paced streams released together", 32, 0.02, 0.02, 100, 100, 10, 30)


def _figures(result: dict[str, Any], load: Load) -> dict[str, float]:
    turns = max(1, result.get("turns", load.turns))
    figures = {
        "p50": result["ttft_p50_ms"],
        "p99": result["ttft_p99_ms"],
        "turn_p50": result["turn_p50_ms"],
        "cpu": 1000 * result["server_cpu_s"] / turns,
        "tokens": result["tokens_per_s"],
        "failures": result.get("failures", 0),
    }
    if "pg_cpu_s" in result:
        figures["pg_cpu"] = 1000 * result["pg_cpu_s"] / turns
    if "pg_statements" in result:
        figures["pg_statements"] = result["pg_statements"] / turns
    if "redis_cpu_s" in result:
        figures["redis_cpu"] = 1000 * result["redis_cpu_s"] / turns
    return figures


def _line(name: str, src: str, rows: list[dict[str, float]]) -> str:
    median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    text = (
        f"{name} {src}: TTFT p50 {median['p50']:.1f} ms, p99 {median['p99']:.1f} ms; "
        f"turn p50 {median['turn_p50']:.1f} ms; "
        f"server CPU {median['cpu']:.2f} ms/turn; {median['tokens']:,.0f} tokens/s"
    )
    if "pg_cpu" in median:
        text += f"; PostgreSQL CPU {median['pg_cpu']:.2f} ms/turn"
    if "pg_statements" in median:
        text += f", {median['pg_statements']:.1f} statements/turn"
    if "redis_cpu" in median:
        text += f"; Redis CPU {median['redis_cpu']:.2f} ms/turn"
    each = ", ".join(f"{row['p99']:.0f}" for row in rows)
    failed = sum(int(row["failures"]) for row in rows)
    return text + f"; {failed} failed turns in all runs  (p99 of each run: {each})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src_a")
    parser.add_argument("src_b")
    parser.add_argument("--load", default="wave", choices=["wave", *(load.key for load in LOADS)])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--scale", type=float, default=0.3, help="multiplies the turn counts of make bench's loads")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--redis", action="store_true", help="PARLEY_REDIS_URL set to a throwaway Redis")
    parser.add_argument("--workers", type=int, default=1, help="parley serve --workers")
    args = parser.parse_args()
    load = WAVE if args.load == "wave" else next(load for load in LOADS if load.key == args.load)
    spec = ParleyTarget("parley-ab", "A/B", args.database, redis=args.redis, workers=args.workers, default=False)
    figures: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    top: dict[str, list[list[Any]]] = {}
    with _workdir() as workdir, ExitStack() as stack:
        bench = Bench(workdir, stack, args.scale)
        saved = os.environ.get("PYTHONPATH")
        for name, src in (("A", args.src_a), ("B", args.src_b)):
            os.environ["PYTHONPATH"] = src  # inherited by the server's process
            bench.start_parley(spec, name)
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
        bench.shape(tokens=load.tokens, delay=load.delay, first_delay=load.first_delay, usage=True)
        for run in range(args.runs):
            for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
                result = bench.run_load(name, load)
                figures[name].append(_figures(result, load))
                if "pg_top_statements" in result:
                    top[name] = result["pg_top_statements"]
    for name, src in (("A", args.src_a), ("B", args.src_b)):
        print(_line(name, src, figures[name]))
    for name, statements in top.items():
        print(f"{name}'s most-called statements in its last run (calls, mean ms in the server, lock waits included):")
        for calls, mean_ms, query in statements:
            print(f"  {calls:>7} {mean_ms:>8.3f}  {query}")


if __name__ == "__main__":
    main()
