"""The one table `make bench` prints: every figure beside its same-run baseline, and the targets.

Throughput cells read `value (ratio× direct)`, latency cells `value (+delta ms over direct)`.
Memory is against the same parley process idle; context against sqlite3 fetching the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.loads import Load

NAMES = {"direct": "direct", "relay": "bare relay", "parley": "parley", "litellm": "LiteLLM proxy"}
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


def _cpu(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    done = r.get("turns") or 0
    cpu = r.get("server_cpu_s")
    if not done or cpu is None:
        return "-"
    return f"{cpu / done * 1000:.2f}"


def _failures(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    text = str(r.get("failures", "-"))
    if r.get("cut"):
        text += f" ({r['cut']} cut)"
    return text


ROWS: list[tuple[str, Cell]] = [
    ("tokens/s", _ratio("tokens_per_s")),
    ("turns/s", _ratio("turns_per_s")),
    ("TTFT p50 ms", _latency("ttft_p50_ms")),
    ("TTFT p99 ms", _latency("ttft_p99_ms")),
    ("turn p50 ms", _latency("turn_p50_ms")),
    ("turn p99 ms", _latency("turn_p99_ms")),
    ("server CPU ms/turn", _cpu),
    ("failures", _failures),
]


def _targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, parley's figure, met?) for each target of the issue."""
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
        for label, cell in ROWS:
            rows.append([f"  {label}", *(cell(per[t], None if t == "direct" else base) for t in targets)])
    memory = results.get("memory")
    if memory:
        rows.append([f"parley, {memory.get('open_streams', 0):,} open streams (baseline: the same process idle)"])
        idle, peak, n = memory["rss_idle"], memory["rss_peak"], max(memory.get("open_streams", 0), 1)
        rows.append(["  RSS idle → peak MB", f"{idle / 2**20:.1f} → {peak / 2**20:.1f}"])
        rows.append(["  RSS per open stream KB", f"{(peak - idle) / n / 1024:.1f}"])
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
