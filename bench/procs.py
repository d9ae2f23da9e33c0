"""Processes of a benchmark run: start, wait until ready, measure from /proc, stop by pid.

Every process the driver starts is tracked here and stopped by its own pid (SIGTERM, then SIGKILL),
never by name. Linux only (/proc). Imports: standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
_SCRUBBED_PREFIXES = ("MCP_LLM_", "PARLEY_", "ANTHROPIC_", "LITELLM_", "OPENAI_")
_SCRUBBED = {"DATABASE_URL", "DATABASE_ADMIN_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without configuration or proxies that could leak in, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SCRUBBED_PREFIXES) and k.upper() not in _SCRUBBED and k.lower() != "no_proxy"
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class Proc:
    """A started process; `port` is read from its `PORT <n>` line when it prints one."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path, *, port_line: bool) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            list(args),
            env=dict(env),
            stdout=subprocess.PIPE if port_line else self._log_file,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.port = 0
        if port_line:
            assert self.popen.stdout is not None
            line = self.popen.stdout.readline().decode().strip()
            if not line.startswith("PORT "):
                self.stop()
                raise RuntimeError(f"{name} did not start: {line!r}; see {log}")
            self.port = int(line.split()[1])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_http(self, url: str, timeout: float = 120.0) -> None:
        """Poll `url` until it answers 2xx (the process must stay alive meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready at {url} after {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (LiteLLM serves from a child process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root` and its descendants, those that already exited included.

    A process's reaped children are in its cumulative children's time (cutime + cstime), so the
    difference between two readings is exact even when processes come and go in between (a
    database server's backends: a connection closed mid-run still counts).
    """
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15])
    return total / CLK_TCK


def wait_idle(root: int, timeout: float = 30.0, quiet: float = 0.05) -> None:
    """Wait until `root` and its descendants use under `quiet` CPU seconds in half a second.

    A server with several workers answers its health check as soon as one is up; the others are
    still starting, which the first load must not pay for.
    """
    deadline = time.monotonic() + timeout
    before = tree_cpu_seconds(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu_seconds(root)
        if now - before < quiet:
            return
        before = now


def rss_bytes(pid: int) -> int:
    """Resident set size of one process now."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE


def http_json(url: str, body: bytes | None = None, timeout: float = 10.0) -> bytes:
    """A tiny GET/POST on loopback (control and stats of the synthetic upstream)."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
        return data
