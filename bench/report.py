"""The one table `make bench` prints: every figure beside its same-run baseline, and the targets.

Throughput cells read `value (ratio× direct)`, latency cells `value (+delta ms over direct)`.
The rows of PostgreSQL and Redis costs appear when a target measured them. Memory is against the
same parley process (and Redis) idle; context against sqlite3 fetching the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.loads import Load
from bench.targets import PARLEY_TARGETS

NAMES = {
    "direct": "direct",
    "relay": "bare relay",
    **{t.key: t.title for t in PARLEY_TARGETS},
    "litellm": "LiteLLM proxy",
}
Cell = Callable[[dict[str, Any], dict[str, Any] | None], str]


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(key: str) -> Cell:
    def cell(r: dict[str, Any], base: dict[str, Any] | None) -> str:
        value = r.get(key)
        text = _num(value)
        if base is None or not base.get(key) or value is None:
            return text
        return f"{text} ({value / base[key]:.2f}×)"

    return cell


def _latency(key: str) -> Cell:
    def cell(r: dict[str, Any], base: dict[str, Any] | None) -> str:
        value = r.get(key)
        text = _num(value, 1)
        if base is None or base.get(key) is None or value is None:
            return text
        return f"{text} ({value - base[key]:+,.1f})"

    return cell


def _per_turn(key: str, factor: float, digits: int) -> Cell:
    def cell(r: dict[str, Any], base: dict[str, Any] | None) -> str:
        done = r.get("turns") or 0
        value = r.get(key)
        if not done or value is None:
            return "-"
        return f"{value / done * factor:.{digits}f}"

    return cell


def _failures(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    text = str(r.get("failures", "-"))
    if r.get("cut"):
        text += f" ({r['cut']} cut)"
    return text


# (label, cell, the key a target's result must have for the row to be shown: None for always)
ROWS: list[tuple[str, Cell, str | None]] = [
    ("tokens/s", _ratio("tokens_per_s"), None),
    ("turns/s", _ratio("turns_per_s"), None),
    ("TTFT p50 ms", _latency("ttft_p50_ms"), None),
    ("TTFT p99 ms", _latency("ttft_p99_ms"), None),
    ("turn p50 ms", _latency("turn_p50_ms"), None),
    ("turn p99 ms", _latency("turn_p99_ms"), None),
    ("server CPU ms/turn", _per_turn("server_cpu_s", 1000, 2), None),
    ("PostgreSQL CPU ms/turn", _per_turn("pg_cpu_s", 1000, 2), "pg_cpu_s"),
    ("PostgreSQL statements/turn", _per_turn("pg_statements", 1, 1), "pg_statements"),
    ("PostgreSQL transactions/turn", _per_turn("pg_transactions", 1, 1), "pg_transactions"),
    ("Redis CPU ms/turn", _per_turn("redis_cpu_s", 1000, 2), "redis_cpu_s"),
    ("failures", _failures, None),
]


def _targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, parley's figure, met?) for each of parley's performance targets."""
    out: list[tuple[str, str, bool | None]] = []
    loads = results.get("loads", {})

    def get(load: str, target: str) -> dict[str, Any] | None:
        got: dict[str, Any] | None = loads.get(load, {}).get(target)
        return got

    sat, sat_direct = get("saturation", "parley"), get("saturation", "direct")
    if sat and sat_direct and sat_direct.get("tokens_per_s"):
        ratio = sat["tokens_per_s"] / sat_direct["tokens_per_s"]
        out.append(("saturation ≥ 0.5× direct tokens/s", f"{ratio:.2f}×", ratio >= 0.5))
    short = get("short", "parley")
    if short:
        out.append(("short turns ≥ 100 turns/s", f"{short['turns_per_s']:.0f}", short["turns_per_s"] >= 100))
    paced, paced_direct = get("paced100", "parley"), get("paced100", "direct")
    if paced and paced_direct and paced.get("ttft_p50_ms") is not None:
        d50 = paced["ttft_p50_ms"] - paced_direct["ttft_p50_ms"]
        d99 = paced["ttft_p99_ms"] - paced_direct["ttft_p99_ms"]
        out.append(("paced C=100 TTFT ≤ +10 ms p50", f"{d50:+.1f} ms", d50 <= 10))
        out.append(("paced C=100 TTFT ≤ +50 ms p99", f"{d99:+.1f} ms", d99 <= 50))
    p500 = get("paced500", "parley")
    if p500:
        out.append(("paced C=500 no failures", str(p500["failures"]), p500["failures"] == 0 and not p500["cut"]))
    memory = results.get("memory")
    if memory and memory.get("open_streams"):
        per = (memory["rss_peak"] - memory["rss_idle"]) / memory["open_streams"] / 1024
        out.append(("≤ 50 KB RSS per open stream", f"{per:.1f} KB", per <= 50))
    context = results.get("context", {}).get("10000")
    if context:
        out.append(("context of 10,000 messages < 50 ms", f"{context['parley_ms']:.1f} ms", context["parley_ms"] < 50))
    return out


def _memory_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    for key, name in (("memory", "parley"), ("memory_redis", "parley+redis")):
        memory = results.get(key)
        if not memory:
            continue
        baseline = "the same process and Redis idle" if "redis_idle" in memory else "the same process idle"
        rows.append([f"{name}, {memory.get('open_streams', 0):,} open streams (baseline: {baseline})"])
        idle, peak, n = memory["rss_idle"], memory["rss_peak"], max(memory.get("open_streams", 0), 1)
        rows.append(["  RSS idle → peak MB", f"{idle / 2**20:.1f} → {peak / 2**20:.1f}"])
        rows.append(["  RSS per open stream KB", f"{(peak - idle) / n / 1024:.1f}"])
        if "redis_idle" in memory:
            r_idle, r_held, r_after = (memory[k] / 2**20 for k in ("redis_idle", "redis_held", "redis_after"))
            rows.append(["  Redis used_memory idle → held MB", f"{r_idle:.1f} → {r_held:.1f}"])
            rows.append(["  Redis MB per 1,000 open turns", f"{(r_held - r_idle) / n * 1000:.2f}"])
            # Ended turns' frames stay in Redis for re-attach until their key expires.
            rows.append(["  Redis MB per 1,000 turns, ended", f"{(r_after - r_idle) / n * 1000:.2f}"])
    return rows


def render(results: dict[str, Any], loads: Sequence[Load]) -> str:
    targets = results["targets"]
    header = ["", *(NAMES.get(t, t) for t in targets)]
    rows: list[list[str]] = []
    for load in loads:
        per = results["loads"].get(load.key)
        if not per:
            continue
        rows.append([load.title])
        base = per.get("direct")
        for label, cell, needs in ROWS:
            if needs is not None and not any(needs in per[t] for t in targets):
                continue
            rows.append([f"  {label}", *(cell(per[t], None if t == "direct" else base) for t in targets)])
    rows += _memory_rows(results)
    context = results.get("context")
    if context:
        rows.append(["context build: history query + build_history (baseline: sqlite3 fetch of the same rows)"])
        for size, c in context.items():
            rows.append([f"  {int(size):,} messages ms", f"{c['parley_ms']:.1f} ({c['ratio']:.1f}× {c['raw_ms']:.1f})"])
    widths = [max(len(r[i]) for r in [header, *rows] if len(r) > i and len(r) > 1) for i in range(len(header))]
    pairs = enumerate(zip(header, widths, strict=True))
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in pairs)]
    lines.append("-" * len(lines[0]))
    for r in rows:
        if len(r) == 1:
            lines.append(r[0])
            continue
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells))
    lines.append("")
    lines.append("targets (parley)")
    for name, figure, met in _targets(results):
        mark = "met" if met else "NOT met"
        lines.append(f"  {name.ljust(40)} {figure.rjust(10)}  {mark}")
    lines.append(f"\n{results.get('seconds', 0):.0f} s; TTFT = time to first token; ratios and deltas against direct")
    return "\n".join(lines)
