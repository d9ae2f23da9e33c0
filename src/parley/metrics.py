"""Prometheus metrics of a parley process (prometheus-client), and their exposition.

Recorded per turn, never per token: a turn's end adds its outcome, duration, time to first token
and (with each stored round) its tokens and cost; the token path itself records nothing. Labels
are small closed sets (outcomes, token directions, error kinds, tool call statuses): never a
user, session or organization id.

Several workers (`parley serve --workers N`) each count in their own process; `server.py` gives
them one `PROMETHEUS_MULTIPROC_DIR` before they start, prometheus-client's multiprocess mode then
keeps each process's values in a file of that directory, and `registry()` adds them up when
scraped (gauges as the sum of the live processes', `parley_approvals_pending` as the latest
process's reading of the database). One process needs no directory and keeps them in memory.

Leaf module: prometheus-client and the standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_DIR):  # the metrics below open their files in it as they are made
    os.makedirs(os.environ[MULTIPROC_DIR], exist_ok=True)

TURN_OUTCOMES = ("completed", "error", "interrupted", "awaiting_approval")
TOKEN_DIRECTIONS = ("input", "output", "cache_read", "cache_write")

TURNS = Counter(
    "parley_turns",
    "Turns that ended, by outcome (a continuation after tool decisions counts as a turn of its own).",
    ["outcome"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "parley_time_to_first_token_seconds",
    "From the message's arrival to the model's first piece of text or reasoning.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0),
)
TURN_DURATION = Histogram(
    "parley_turn_duration_seconds",
    "From the message's arrival to the turn's end (stored), whatever the outcome.",
    buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0),
)
TOKENS = Counter("parley_tokens", "Tokens billed, by direction.", ["direction"])
COST = Counter("parley_cost_usd", "Cost billed to organizations, in US dollars.")
UPSTREAM_ERRORS = Counter(
    "parley_upstream_errors", "Turns that ended with a model server error (after retries), by kind.", ["kind"]
)
UPSTREAM_RETRIES = Counter("parley_upstream_retries", "Model server requests retried before a reply began.")
ACTIVE_STREAMS = Gauge("parley_active_streams", "SSE streams open to clients.", multiprocess_mode="livesum")
LIVE_SESSIONS = Gauge("parley_live_sessions", "Sessions held in memory.", multiprocess_mode="livesum")
DB_WAIT = Histogram(
    "parley_db_wait_seconds",
    "How long a unit of work waited for the database: a pooled connection, or SQLite's write turn.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)
TOOL_EXECUTIONS = Counter("parley_tool_executions", "Tool calls, by the status they reached.", ["status"])
APPROVALS_PENDING = Gauge(
    "parley_approvals_pending",
    "Tool calls waiting for a person's decision, across every process (read from the database).",
    multiprocess_mode="livemostrecent",
)

# The children of the fixed label values, made once: `labels()` takes a lock and a lookup.
_TURNS = {outcome: TURNS.labels(outcome) for outcome in TURN_OUTCOMES}
_TOKENS = {direction: TOKENS.labels(direction) for direction in TOKEN_DIRECTIONS}
_observe_ttft = TIME_TO_FIRST_TOKEN.observe
_observe_duration = TURN_DURATION.observe
_observe_db_wait = DB_WAIT.observe
_cost_inc = COST.inc


def turn_ended(outcome: str, *, duration: float, first_token: float | None, upstream_error: str | None) -> None:
    """A turn's end (seconds since its message arrived; None: no token came)."""
    _TURNS[outcome].inc()
    _observe_duration(duration)
    if first_token is not None:
        _observe_ttft(first_token)
    if upstream_error is not None:
        UPSTREAM_ERRORS.labels(upstream_error).inc()


def usage(input_tokens: int, output_tokens: int, cache_read: int, cache_write: int, cost_cents: Decimal) -> None:
    """What one stored round of a turn billed."""
    for direction, count in (
        ("input", input_tokens),
        ("output", output_tokens),
        ("cache_read", cache_read),
        ("cache_write", cache_write),
    ):
        if count:
            _TOKENS[direction].inc(count)
    if cost_cents:
        _cost_inc(float(cost_cents) / 100)


def db_waited(seconds: float) -> None:
    _observe_db_wait(seconds)


def upstream_retried() -> None:
    UPSTREAM_RETRIES.inc()


def tool_calls(status: str, count: int = 1) -> None:
    if count:
        TOOL_EXECUTIONS.labels(status).inc(count)


def registry() -> CollectorRegistry:
    """What a scrape reads: every process's values when workers share a multiprocess directory,
    else this process's (with the standard process and Python collectors)."""
    path = os.environ.get(MULTIPROC_DIR)
    if not path:
        return REGISTRY
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=path)  # type: ignore[no-untyped-call]
    return combined


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """A worker is gone: its live gauges stop counting (its counters still add up)."""
    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve the scrape on `host:port` from a thread of this process (prometheus-client's own
    HTTP server); returns what stops it. Run by the process that owns the port: the only process,
    or the supervisor of several workers (whose registry reads the workers' files)."""
    server, thread = start_http_server(port, addr=host, registry=registry())

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
