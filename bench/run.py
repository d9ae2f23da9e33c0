"""`make bench`: one run, one upstream, one table of parley against direct and its peers.

Starts, each in its own process and on loopback only: the synthetic upstream (`bench/upstream.py`),
the bare relay (`bench/relay.py`), parley in several deployment shapes (`bench/targets.py`:
`python -m parley serve` on SQLite in a temp dir or on a throwaway PostgreSQL cluster, with or
without a throwaway Redis, one or two worker processes; auth on, MCP_LLM_PROVIDER=openai-compatible
pointing at the upstream; the services from `bench/services.py`) and, when `make bench-peers` has
installed it, LiteLLM's proxy (bench/.peers-venv; one worker, default config, no database). Each
load runs against every target in turn, through `bench/loadgen.py` (its own process), then
parley's memory with 1,000 open streams (and Redis's, on parley+redis) and the time to build a
long session's context. Every figure is shown beside a baseline measured in the same run: machines
are shared and noisy.

    python -m bench.run [--loads saturation,short,paced100,paced500] [--targets all | direct,relay,parley,...]
                        [--no-memory] [--no-context] [--scale 1.0] [--json results.json]

Bounded: every load has a turn count and a time limit; everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.loads import LOADS, Load
from bench.procs import Proc, clean_env, cpu_seconds, http_json, rss_bytes, tree, wait_idle
from bench.report import render
from bench.services import Meter, Postgres, Redis
from bench.targets import OTHER_TARGETS, PARLEY_TARGETS, ParleyTarget, all_targets, default_targets, parley_target

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
LITELLM_KEY = "sk-bench-litellm-0123456789abcdef0123456789abcdef"
MEMORY_STREAMS = 1000


@dataclass(slots=True)
class SeededDatabase:
    """A parley target's seeded database: the URL parley serves with, its token, what meters it."""

    url: str
    token: str
    meters: list[Meter]


@dataclass(slots=True)
class Parley:
    """A running parley server of some target."""

    spec: ParleyTarget
    proc: Proc
    database: SeededDatabase


class Bench:
    """The processes of one run and the measurements taken through them."""

    def __init__(self, workdir: Path, stack: ExitStack, scale: float) -> None:
        self.workdir = workdir
        self.stack = stack
        self.scale = scale
        self.python = sys.executable
        self.upstream = self._start("upstream", [self.python, "-m", "bench.upstream"], port_line=True)
        self.upstream_url = f"http://127.0.0.1:{self.upstream.port}"
        self.targets: dict[str, Proc] = {}
        self.parley: dict[str, Parley] = {}
        self._databases: dict[str, SeededDatabase] = {}
        self._postgres: Postgres | None = None
        self._redis: Redis | None = None

    def _start(self, name: str, args: list[str], *, port_line: bool, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, args, env or clean_env(), self.workdir / f"{name}.log", port_line=port_line)
        self.stack.callback(proc.stop)
        return proc

    # -- targets -----------------------------------------------------------------------------------

    def start_relay(self) -> None:
        args = [self.python, "-m", "bench.relay", "--upstream", f"{self.upstream_url}/v1"]
        relay = self._start("relay", args, port_line=True)
        relay.wait_http(f"http://127.0.0.1:{relay.port}/healthz", timeout=30)
        self.targets["relay"] = relay

    @property
    def postgres(self) -> Postgres:
        """The run's PostgreSQL cluster, started on first use."""
        if self._postgres is None:
            self._postgres = Postgres(self.stack)
        return self._postgres

    @property
    def redis(self) -> Redis:
        """The run's Redis server, started on first use."""
        if self._redis is None:
            self._redis = Redis(self.stack)
        return self._redis

    def database(self, spec: ParleyTarget) -> SeededDatabase:
        """The target's own database, migrated and seeded on first use (later servers share it)."""
        if spec.key in self._databases:
            return self._databases[spec.key]
        meters: list[Meter] = []
        if spec.database == "postgres":
            url, owner_url = self.postgres.database(spec.slug)
            meters.append(self.postgres.meter(spec.slug))
        else:
            url = owner_url = f"sqlite+aiosqlite:///{self.workdir / spec.slug / 'parley.db'}"
        if spec.redis:
            meters.append(self.redis.meter())
        database = SeededDatabase(url, _seed(owner_url), meters)
        self._databases[spec.key] = database
        return database

    def start_parley(self, spec: ParleyTarget, name: str | None = None) -> Parley:
        """A parley server of `spec` on its database, ready (every worker started) when this returns."""
        name = name or spec.key
        database = self.database(spec)
        port = _free_port()
        env = clean_env(
            MCP_LLM_PROVIDER="openai-compatible",
            MCP_LLM_BASE_URL=f"{self.upstream_url}/v1",
            MCP_LLM_MODEL="bench-model",
            MCP_LLM_API_KEY="sk-bench",
            MCP_LLM_PRICE_INPUT_PER_M_USD="3",
            MCP_LLM_PRICE_OUTPUT_PER_M_USD="15",
            DATABASE_URL=database.url,
            PARLEY_DATA_DIR=str(self.workdir / spec.slug),
        )
        if spec.redis:
            env["PARLEY_REDIS_URL"] = self.redis.url
        args = [self.python, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--workers", str(spec.workers), "--log-level", "warning"]
        proc = self._start(name, args, port_line=False, env=env)
        proc.port = port
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        wait_idle(proc.pid)
        self.parley[name] = Parley(spec, proc, database)
        return self.parley[name]

    def service_logs(self) -> list[tuple[str, Path]]:
        """(name, path) of the PostgreSQL and Redis servers' logs, for --keep-logs."""
        logs = []
        if self._postgres is not None:
            logs.append(("postgres.log", self._postgres.cluster.log))
        if self._redis is not None:
            logs.append(("redis.log", self._redis.log))
        return logs

    def start_litellm(self) -> bool:
        binary = PEERS_VENV / "bin" / "litellm"
        if not binary.exists():
            return False
        port = _free_port()
        env = clean_env(
            OPENAI_API_KEY="sk-bench",
            LITELLM_MASTER_KEY=LITELLM_KEY,  # required to start; checked per request like parley's token
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no network here: use the bundled price map
        )
        args = [str(binary), "--model", "openai/bench-model", "--api_base", f"{self.upstream_url}/v1"]
        args += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        proc = self._start("litellm", args, port_line=False, env=env)
        proc.port = port
        proc.wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
        self.targets["litellm"] = proc
        return True

    # -- measurements ------------------------------------------------------------------------------

    def shape(self, **shape: Any) -> None:
        http_json(f"{self.upstream_url}/control", orjson.dumps(shape))

    def run_load(self, target: str, load: Load) -> dict[str, Any]:
        """One load against one target; server CPU is counted for the timed part only."""
        cfg: dict[str, Any] = {
            "concurrency": load.concurrency,
            "turns": max(load.concurrency, int(load.turns * self.scale)),
            "expected_tokens": load.tokens,
            "soft_seconds": load.soft_seconds * self.scale,
            "hard_seconds": load.hard_seconds * max(self.scale, 0.5),
            "sync": True,
        }
        if target == "direct":
            cfg.update(target="openai", port=self.upstream.port)
            server = self.upstream
        elif target == "litellm":
            server = self.targets["litellm"]
            cfg.update(target="openai", port=server.port, api_key=LITELLM_KEY, warmup=1)
        elif target == "relay":
            server = self.targets["relay"]
            cfg.update(target="relay", port=server.port)
        else:
            parley = self.parley[target]
            cfg.update(target="parley", port=parley.proc.port, token=parley.database.token)
            return self._loadgen(cfg, parley.proc, meters=parley.database.meters)
        return self._loadgen(cfg, server)

    def _loadgen(
        self,
        cfg: dict[str, Any],
        server: Proc,
        *,
        meters: Sequence[Meter] = (),
        on_ready: Callable[[], _MemoryWatcher] | None = None,
    ) -> dict[str, Any]:
        pids = tree(server.pid)
        up_pids = [self.upstream.pid]
        proc = subprocess.Popen(
            [self.python, "-m", "bench.loadgen", orjson.dumps(cfg).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.workdir / "loadgen.log").open("ab"),
            env=clean_env(),
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline().decode().strip()
            if line != "READY":
                raise RuntimeError(f"load generator failed: {line!r}; see {self.workdir / 'loadgen.log'}")
            extra = on_ready() if on_ready is not None else None
            for meter in meters:
                meter.start()
            cpu0, up0 = cpu_seconds(pids), cpu_seconds(up_pids)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            if extra is not None:
                extra.run()
            out = proc.stdout.readline()
            cpu1, up1 = cpu_seconds(pids), cpu_seconds(up_pids)
            measured = [meter.stop() for meter in meters]
        finally:
            if proc.poll() is None:
                proc.wait(timeout=max(60.0, float(cfg.get("hard_seconds", 60)) + 30))
        result: dict[str, Any] = orjson.loads(out)
        result["server_cpu_s"] = cpu1 - cpu0
        result["upstream_cpu_s"] = up1 - up0
        for figures in measured:
            result.update(figures)
        if extra is not None:
            result.update(extra.result)
        return result

    def memory(self, spec: ParleyTarget) -> dict[str, Any]:
        """Peak RSS of a fresh process of `spec` holding 1,000 streams open, against its idle RSS.

        With Redis, also Redis's `used_memory`: idle, while the streams are held, and once the
        turns have ended (their frames stay re-attachable in Redis for a while).
        """
        assert spec.workers == 1, "RSS is read from one server process"
        parley = self.start_parley(spec, f"{spec.key}-memory")
        # Held from the timed part on only: held warm-up turns would wait out parley's idle timeout.
        self.shape(tokens=8, delay=0.01, first_delay=0.0, usage=True)
        cfg = {
            "target": "parley",
            "port": parley.proc.port,
            "token": parley.database.token,
            "concurrency": MEMORY_STREAMS,
            "turns": MEMORY_STREAMS,
            "expected_tokens": 8,
            "warmup": 20,
            "turns_per_session": 1,
            "soft_seconds": 120,
            "hard_seconds": 180,
            "sync": True,
        }
        redis = self.redis if spec.redis else None
        watcher = _MemoryWatcher(self, parley.proc.pid, redis)
        result = self._loadgen(cfg, parley.proc, on_ready=watcher.arm)
        if redis is not None:
            time.sleep(0.5)  # the last frames reach Redis one flush after the client's `done`
            result["redis_after"] = redis.used_memory()
        return result


class _MemoryWatcher:
    """Samples parley's RSS (and Redis's memory) while streams open; releases them once all are open."""

    def __init__(self, bench: Bench, pid: int, redis: Redis | None) -> None:
        self.bench = bench
        self.pid = pid
        self.redis = redis
        self.result: dict[str, Any] = {}

    def arm(self) -> _MemoryWatcher:
        time.sleep(1.0)  # let the warm-up's garbage settle
        self.result["rss_idle"] = rss_bytes(self.pid)
        if self.redis is not None:
            self.result["redis_idle"] = self.redis.used_memory()
        self.bench.shape(tokens=8, delay=0.01, first_delay=0.0, usage=True, hold=True)
        return self

    def run(self) -> None:
        peak, open_max, deadline = 0, 0, time.monotonic() + 150
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            rss = rss_bytes(self.pid)
            peak = max(peak, rss)
            now_open = orjson.loads(http_json(f"{self.bench.upstream_url}/stats"))["open"]
            if now_open > open_max:
                open_max, stable_since = now_open, time.monotonic()
            if open_max >= MEMORY_STREAMS or time.monotonic() - stable_since > 10:
                break
            time.sleep(0.05)
        redis_held = 0
        for _ in range(10):  # a few more samples with everything open
            peak = max(peak, rss_bytes(self.pid))
            if self.redis is not None:
                redis_held = max(redis_held, self.redis.used_memory())
            time.sleep(0.05)
        http_json(f"{self.bench.upstream_url}/release", b"{}")
        self.result.update(rss_peak=peak, open_streams=open_max)
        if self.redis is not None:
            self.result["redis_held"] = redis_held


def _seed(url: str) -> str:
    """One organization, one user, and that user's API token on the database at `url` (as its owner)."""
    from parley.store import admin

    async def go() -> str:
        db = await admin.open_database(url)
        try:
            org = await admin.create_organization(db, "bench")
            user = await admin.create_user(db, org_id=org, email="bench@example.test", name="Bench")
            return (await admin.create_token(db, user_id=user, org_id=org)).token
        finally:
            await db.dispose()

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _context(python: str, workdir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [python, "-m", "bench.context"],
        capture_output=True,
        env=clean_env(),
        timeout=300,
        check=True,
    )
    (workdir / "context.log").write_bytes(out.stderr)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _wanted(parser: argparse.ArgumentParser, targets: str) -> list[str]:
    wanted = []
    for key in targets.split(","):
        spec = parley_target(key)
        if spec is None and key not in OTHER_TARGETS:
            parser.error(f"unknown target {key!r}; the targets are {all_targets()}")
        wanted.append(spec.key if spec is not None else key)
    return wanted


def _can_start(spec: ParleyTarget) -> bool:
    """Whether the services `spec` needs are installed; says what is missing when not."""
    from tests.support import postgres, redis

    missing = [postgres.missing() if spec.database == "postgres" else None, redis.missing() if spec.redis else None]
    for reason in filter(None, missing):
        print(f"{reason}: the {spec.title} column is left out.", file=sys.stderr)
    return not any(missing)


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default=",".join(load.key for load in LOADS))
    parser.add_argument(
        "--targets",
        default=default_targets(),
        help=f"comma-separated, or `all` ({all_targets()}); parley-x2 may be written parley×2",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-context", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies turn counts and time limits")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    args = parser.parse_args()
    wanted = _wanted(parser, all_targets() if args.targets == "all" else args.targets)
    loads = [load for load in LOADS if load.key in args.loads.split(",")]
    started = time.monotonic()
    results: dict[str, Any] = {"loads": {}, "targets": []}
    with _workdir() as workdir, ExitStack() as stack:
        bench = Bench(workdir, stack, args.scale)
        targets = ["direct"]
        if "relay" in wanted:
            bench.start_relay()
            targets.append("relay")
        for spec in PARLEY_TARGETS:
            if spec.key in wanted and _can_start(spec):
                print(f"starting {spec.key} ...", file=sys.stderr, flush=True)
                bench.start_parley(spec)
                targets.append(spec.key)
        if "litellm" in wanted:
            if bench.start_litellm():
                targets.append("litellm")
            else:
                print("LiteLLM is not installed (make bench-peers): its column is left out.", file=sys.stderr)
        results["targets"] = targets
        for load in loads:
            bench.shape(tokens=load.tokens, delay=load.delay, first_delay=load.first_delay, usage=True)
            results["loads"][load.key] = {}
            for target in targets:
                print(f"{load.key}: {target} ...", file=sys.stderr, flush=True)
                results["loads"][load.key][target] = bench.run_load(target, load)
        for key, name in (("memory", "parley"), ("memory_redis", "parley+redis")):
            if not args.no_memory and name in targets:
                print(f"memory: {name} with 1,000 open streams ...", file=sys.stderr, flush=True)
                results[key] = bench.memory(bench.parley[name].spec)
        if not args.no_context:
            print("context: 1,000 and 10,000 stored messages ...", file=sys.stderr, flush=True)
            results["context"] = _context(bench.python, workdir)
        if args.keep_logs:
            import shutil

            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
            for name, log in bench.service_logs():
                shutil.copy(log, args.keep_logs / name)
    results["seconds"] = time.monotonic() - started
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(render(results, loads))


if __name__ == "__main__":
    main()
