"""`python -m parley serve` as a child process: what an operator runs, killed and restarted at will.

For the tests that need a process of its own: a crash (SIGKILL, no cleanup at all), a restart, a
second process beside the first, several workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from parley.local.model_server import log_tail


class ParleyProcess:
    """`python -m parley serve` on a fixed port with a given environment."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path, *, workers: int = 1) -> None:
        self.env, self.port, self.log_path, self.workers = env, port, log_path, workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ParleyProcess:
        cmd = [sys.executable, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"parley exited with {self.proc.returncode}:\n{log_tail(self.log_path, 40)}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"parley did not answer /healthz in {timeout}s:\n{log_tail(self.log_path, 40)}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, the whole process group: no shutdown, no cleanup, as a crash."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)
