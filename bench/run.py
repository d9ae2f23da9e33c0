"""`make bench`: one run, one upstream, one table of parley against direct and its peers.

Starts, each in its own process and on loopback only: the synthetic upstream (`bench/upstream.py`),
the bare relay (`bench/relay.py`), parley (`python -m parley serve` on SQLite in a temp dir, auth
on, MCP_LLM_PROVIDER=openai-compatible pointing at the upstream) and, when `make bench-peers` has
installed it, LiteLLM's proxy (bench/.peers-venv; one worker, default config, no database). Each
load runs against every target in turn, through `bench/loadgen.py` (its own process), then
parley's memory with 1,000 open streams and the time to build a long session's context. Every
figure is shown beside a baseline measured in the same run: machines are shared and noisy.

    python -m bench.run [--loads saturation,short,paced100,paced500] [--targets direct,relay,parley,litellm]
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson

from bench.loads import LOADS, Load
from bench.procs import Proc, clean_env, cpu_seconds, http_json, rss_bytes, tree
from bench.report import render

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".peers-venv"
LITELLM_KEY = "sk-bench-litellm-0123456789abcdef0123456789abcdef"
MEMORY_STREAMS = 1000


class Bench:
    """The processes of one run and the measurements taken through them."""

    def __init__(self, workdir: Path, stack: ExitStack, scale: float) -> None:
        self.workdir = workdir
        self.stack = stack
        self.scale = scale
        self.python = sys.executable
        self.upstream = self._start("upstream", [self.python, "-m", "bench.upstream"], port_line=True)
        self.upstream_url = f"http://127.0.0.1:{self.upstream.port}"
        self.token = ""
        self.targets: dict[str, Proc] = {}

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

    def seed(self) -> str:
        from parley.store import admin

        async def go() -> str:
            db = await admin.open_database(self.database_url)
            try:
                org = await admin.create_organization(db, "bench")
                user = await admin.create_user(db, org_id=org, email="bench@example.test", name="Bench")
                return (await admin.create_token(db, user_id=user, org_id=org)).token
            finally:
                await db.dispose()

        self.token = asyncio.run(go())
        return self.token

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.workdir / 'parley.db'}"

    def start_parley(self, name: str = "parley") -> Proc:
        port = _free_port()
        env = clean_env(
            MCP_LLM_PROVIDER="openai-compatible",
            MCP_LLM_BASE_URL=f"{self.upstream_url}/v1",
            MCP_LLM_MODEL="bench-model",
            MCP_LLM_API_KEY="sk-bench",
            MCP_LLM_PRICE_INPUT_PER_M_USD="3",
            MCP_LLM_PRICE_OUTPUT_PER_M_USD="15",
            DATABASE_URL=self.database_url,
            PARLEY_DATA_DIR=str(self.workdir),
        )
        args = [self.python, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", str(port)]
        proc = self._start(name, [*args, "--log-level", "warning"], port_line=False, env=env)
        proc.port = port
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        self.targets[name] = proc
        return proc

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
            server = self.targets[target]
            cfg.update(target="parley", port=server.port, token=self.token)
        return self._loadgen(cfg, server)

    def _loadgen(
        self, cfg: dict[str, Any], server: Proc, *, on_ready: Callable[[], _MemoryWatcher] | None = None
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
            cpu0, up0 = cpu_seconds(pids), cpu_seconds(up_pids)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            if extra is not None:
                extra.run()
            out = proc.stdout.readline()
            cpu1, up1 = cpu_seconds(pids), cpu_seconds(up_pids)
        finally:
            if proc.poll() is None:
                proc.wait(timeout=max(60.0, float(cfg.get("hard_seconds", 60)) + 30))
        result: dict[str, Any] = orjson.loads(out)
        result["server_cpu_s"] = cpu1 - cpu0
        result["upstream_cpu_s"] = up1 - up0
        if extra is not None:
            result.update(extra.result)
        return result

    def memory(self) -> dict[str, Any]:
        """Peak RSS of a fresh parley process holding 1,000 streams open, against its idle RSS."""
        parley = self.start_parley("parley-memory")
        # Held from the timed part on only: held warm-up turns would wait out parley's idle timeout.
        self.shape(tokens=8, delay=0.01, first_delay=0.0, usage=True)
        cfg = {
            "target": "parley",
            "port": parley.port,
            "token": self.token,
            "concurrency": MEMORY_STREAMS,
            "turns": MEMORY_STREAMS,
            "expected_tokens": 8,
            "warmup": 20,
            "turns_per_session": 1,
            "soft_seconds": 120,
            "hard_seconds": 180,
            "sync": True,
        }
        watcher = _MemoryWatcher(self, parley.pid)
        return self._loadgen(cfg, parley, on_ready=watcher.arm)


class _MemoryWatcher:
    """Samples parley's RSS while streams open; releases the held streams once all are open."""

    def __init__(self, bench: Bench, pid: int) -> None:
        self.bench = bench
        self.pid = pid
        self.result: dict[str, Any] = {}

    def arm(self) -> _MemoryWatcher:
        time.sleep(1.0)  # let the warm-up's garbage settle
        self.result["rss_idle"] = rss_bytes(self.pid)
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
        for _ in range(10):  # a few more samples with everything open
            peak = max(peak, rss_bytes(self.pid))
            time.sleep(0.05)
        http_json(f"{self.bench.upstream_url}/release", b"{}")
        self.result.update(rss_peak=peak, open_streams=open_max)


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


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default=",".join(load.key for load in LOADS))
    parser.add_argument("--targets", default="direct,relay,parley,litellm")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-context", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies turn counts and time limits")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    args = parser.parse_args()
    wanted = args.targets.split(",")
    loads = [load for load in LOADS if load.key in args.loads.split(",")]
    started = time.monotonic()
    results: dict[str, Any] = {"loads": {}, "targets": []}
    with _workdir() as workdir, ExitStack() as stack:
        bench = Bench(workdir, stack, args.scale)
        bench.seed()
        targets = ["direct"]
        if "relay" in wanted:
            bench.start_relay()
            targets.append("relay")
        if "parley" in wanted:
            bench.start_parley()
            targets.append("parley")
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
        if not args.no_memory and "parley" in wanted:
            print("memory: parley with 1,000 open streams ...", file=sys.stderr, flush=True)
            results["memory"] = bench.memory()
        if not args.no_context:
            print("context: 1,000 and 10,000 stored messages ...", file=sys.stderr, flush=True)
            results["context"] = _context(bench.python, workdir)
        if args.keep_logs:
            import shutil

            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
    results["seconds"] = time.monotonic() - started
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(render(results, loads))


if __name__ == "__main__":
    main()
