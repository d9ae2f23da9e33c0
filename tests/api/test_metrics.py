"""`/metrics` as Prometheus reads it (prometheus-client's own parser), after scripted turns; only
behind its token on the API's port; and with several workers, the counts of all of them added up.

The metrics of one process are process-wide (every app of this test process counts in them), so
in-process tests compare a scrape before with one after.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx2
import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from parley.errors import ProviderError, ProviderErrorKind
from parley.local.model_server import free_port
from tests.api.conftest import API, create_session, detail, open_turn, send, wait_until
from tests.conftest import DatabaseUrls, ServerFactory, Tenants, base_env, client
from tests.support.live_server import LiveServer
from tests.support.parley_process import ParleyProcess
from tests.support.scripted_provider import Reply, ScriptedProvider
from tests.support.scripted_upstream import ScriptedUpstream, TokenStream

TOKEN = "scrape-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ALLOWED_LABELS = {"outcome", "direction", "kind", "status", "le"}


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, token: str | None = TOKEN) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx2.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")  # the text exposition format
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def server(make_server: ServerFactory) -> tuple[LiveServer, ScriptedProvider]:
    provider = ScriptedProvider()
    return make_server(provider, PARLEY_METRICS_TOKEN=TOKEN), provider


def test_turns_that_succeed_fail_and_stop_are_counted_once_each(
    server: tuple[LiveServer, ScriptedProvider], tenants: Tenants
) -> None:
    live, provider = server
    provider.enqueue(
        Reply(),
        Reply(tokens=[], usage=None, error=ProviderError(ProviderErrorKind.UNAVAILABLE)),
        Reply(tokens=[f"w{i} " for i in range(40)], delay=0.03, usage=None),
    )
    before = scrape(live.url)
    with client(live, tenants.a1) as c, client(live, tenants.a1) as other:
        sid = create_session(c)
        assert send(c, sid, "hello").types[-1] == "done"
        failed = send(c, sid, "again")
        assert failed.of("error")[0].data["code"] == "upstream_unavailable"
        with open_turn(c, sid, "a long one") as turn:
            turn.deltas(2)
            assert other.post(f"{API}/sessions/{sid}/interrupt").status_code == 200
            turn.rest()
        replies = [m for m in detail(c, sid)["messages"] if m["role"] == "assistant"]
    after = scrape(live.url)
    assert delta(before, after, "parley_turns_total", outcome="completed") == 1
    assert delta(before, after, "parley_turns_total", outcome="error") == 1
    assert delta(before, after, "parley_turns_total", outcome="interrupted") == 1
    assert delta(before, after, "parley_upstream_errors_total", kind="upstream_unavailable") == 1
    assert delta(before, after, "parley_turn_duration_seconds_count") == 3
    assert delta(before, after, "parley_turn_duration_seconds_sum") > 0
    assert delta(before, after, "parley_time_to_first_token_seconds_count") == 2  # the failed turn had none
    assert delta(before, after, "parley_time_to_first_token_seconds_bucket", le="+Inf") == 2
    # Tokens and cost: exactly what the replies were billed.
    assert delta(before, after, "parley_tokens_total", direction="input") == sum(m["inputTokens"] or 0 for m in replies)
    assert delta(before, after, "parley_tokens_total", direction="output") == sum(
        m["outputTokens"] or 0 for m in replies
    )
    cents = sum(Decimal(m["costCents"] or "0") for m in replies)
    assert delta(before, after, "parley_cost_usd_total") == pytest.approx(float(cents) / 100)
    assert delta(before, after, "parley_db_wait_seconds_count") >= 6  # admissions and stored replies at least
    assert value(after, "parley_active_streams") == value(before, "parley_active_streams")  # every stream closed
    # The live session is counted by the upkeep (within a tick).
    wait_until(lambda: value(scrape(live.url), "parley_live_sessions") >= 1, timeout=3)
    _no_ids_in_labels(after, tenants, sid)


def test_every_metric_is_exposed_with_its_type(server: tuple[LiveServer, ScriptedProvider]) -> None:
    live, _ = server
    text = httpx2.get(f"{live.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert {name: families.get(name) for name in EXPECTED} == EXPECTED


EXPECTED = {
    "parley_turns": "counter",
    "parley_time_to_first_token_seconds": "histogram",
    "parley_turn_duration_seconds": "histogram",
    "parley_tokens": "counter",
    "parley_cost_usd": "counter",
    "parley_upstream_errors": "counter",
    "parley_upstream_retries": "counter",
    "parley_active_streams": "gauge",
    "parley_live_sessions": "gauge",
    "parley_db_wait_seconds": "histogram",
    "parley_tool_executions": "counter",
    "parley_approvals_pending": "gauge",
}


def _no_ids_in_labels(samples: Samples, tenants: Tenants, *ids: str) -> None:
    for name, labels in samples:
        if not name.startswith("parley_"):
            continue
        assert {key for key, _ in labels} <= ALLOWED_LABELS, (name, labels)
        values = {v for _, v in labels}
        assert not values & {tenants.org_a, tenants.org_b, *ids}, (name, labels)


def test_metrics_need_their_token_on_the_api_port(
    server: tuple[LiveServer, ScriptedProvider], make_server: ServerFactory
) -> None:
    live, _ = server
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        r = httpx2.get(f"{live.url}/metrics", headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    assert "/metrics" not in httpx2.get(f"{live.url}/openapi.json").json()["paths"]
    closed = make_server(ScriptedProvider())  # no token, no metrics on the API's port
    assert httpx2.get(f"{closed.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_a_short_metrics_token_or_a_bad_address_is_refused_at_start(tmp_path: Path) -> None:
    from parley.config import load_settings
    from parley.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_settings(base_env(tmp_path, PARLEY_METRICS_TOKEN="short", PARLEY_METRICS_ADDRESS="9464"))
    assert [p.split(":")[0] for p in refused.value.problems] == ["PARLEY_METRICS_ADDRESS", "PARLEY_METRICS_TOKEN"]
    ok = load_settings(base_env(tmp_path, PARLEY_METRICS_ADDRESS="[::1]:9464"))
    assert ok.metrics_listen == ("::1", 9464)


# --- several workers ---------------------------------------------------------------------------------


def _turn_counts(directory: Path) -> dict[str, float]:
    """parley_turns_total in each worker's file of the multiprocess directory, by process id."""
    counts: dict[str, float] = Counter()
    for path in directory.glob("counter_*.db"):
        pid = path.stem.split("_")[-1]
        for key, sample, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, name, *_ = orjson.loads(key)
            if name == "parley_turns_total":
                counts[pid] += sample
    return counts


def test_with_two_workers_the_counts_add_up(tenants: Tenants, database: DatabaseUrls, data_dir: Path) -> None:
    metrics_port = free_port()
    multiproc = data_dir / "metrics"
    with ScriptedUpstream() as upstream:
        upstream.set_default(TokenStream(n=20, delay=0.01))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "MCP_LLM_", "DATABASE_"))},
            **base_env(data_dir, MCP_LLM_BASE_URL=upstream.base_url, DATABASE_URL=tenants.database_url),
            "PYTHONPATH": str(ROOT / "src"),
            "PARLEY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
            "PARLEY_METRICS_TOKEN": TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        process = ParleyProcess(env, free_port(), data_dir / "workers.log", workers=2)
        process.start()
        try:
            turns, failures = 0, []

            def one() -> None:
                with httpx2.Client(base_url=process.url, headers={"Authorization": f"Bearer {tenants.a1}"}) as c:
                    sid = create_session(c)
                    if send(c, sid).types[-1] != "done":
                        failures.append(sid)

            # The kernel, not parley, spreads connections over the workers, and one worker may
            # take a whole burst: send bursts until both have served turns.
            for _burst in range(8):
                threads = [threading.Thread(target=one) for _ in range(8)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=60)
                turns += len(threads)
                by_worker = _turn_counts(multiproc)
                if len(by_worker) == 2 and all(by_worker.values()):
                    break
            assert failures == []
            address = f"http://127.0.0.1:{metrics_port}"
            summed = scrape(address, token=None)  # the supervisor's address needs no token
            assert value(summed, "parley_turns_total", outcome="completed") == turns
            assert sum(by_worker.values()) == turns
            assert len(by_worker) == 2, by_worker  # each worker counts in its own file
            assert all(by_worker.values()), by_worker  # and both served turns
            assert value(summed, "parley_tokens_total", direction="output") == 20 * turns
            assert value(summed, "parley_turn_duration_seconds_count") == turns
            assert value(summed, "parley_active_streams") == 0
            # A worker's /metrics (behind the token) reads every worker's files too.
            assert value(scrape(process.url), "parley_turns_total", outcome="completed") == turns
        finally:
            process.stop()
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in process.log(400)
