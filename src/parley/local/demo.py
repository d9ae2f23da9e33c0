"""`parley demo`: parley plus a real local model, working out of the box on one machine.

Installs the local model stack if missing, starts llama-cpp-python on a free loopback port, makes
the demo organization, user and API token, and runs parley in this process until Ctrl-C. Every
piece of state lives under `<data_dir>/demo/` (model API key, raw demo token, model server log,
the demo tools' configuration), `<data_dir>/demo-tools/` (the notes) and `<data_dir>/parley.db`,
so a second run reuses it all and is up in seconds.

Unless the operator names tool servers of their own (`PARLEY_MCP_CONFIG`), parley runs with the
demo tool server (`parley.tools.demo_config`): a clock, a calculator and notes, the notes asking
for approval before they are written.

A watchdog thread restarts the model server if it dies; meanwhile parley keeps serving and
turns fail with `upstream_unavailable`, which is what a client of a real deployment would see.

May import: parley.config, parley.errors, parley.store.admin, parley.server, parley.tools.demo and
parley.local.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from parley.config import Settings, default_data_dir, load_settings
from parley.errors import ConfigError
from parley.local.install import InstallError, ensure_local_model
from parley.local.model_server import LocalModelServer, ModelServerError, port_is_free
from parley.store import admin
from parley.tools.demo import demo_config

DEMO_ORG = "demo"
DEMO_EMAIL = "demo@parley.local"
DEMO_MAX_TOKENS = "512"  # the 135M model has a 2,048-token window: history is fitted to the rest
WATCHDOG_INTERVAL = 2.0


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed


def _read_secret(path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


def model_api_key(demo_dir: Path) -> str:
    """The local model server's key: random once, then reused so nothing needs reconfiguring."""
    path = demo_dir / "model-api-key"
    key = _read_secret(path)
    if key is None:
        key = secrets.token_urlsafe(24)
        _write_secret(path, key)
    return key


async def ensure_demo_identity(database_url: str, demo_dir: Path) -> tuple[str, bool]:
    """The demo user's raw API token and whether it was issued just now.

    The raw token cannot be read back from the database (it is stored hashed), so it is kept in
    `<demo_dir>/token`; if that token is gone from the database or revoked, a new one is issued.
    """
    db = await admin.open_database(database_url)
    try:
        org = await admin.find_organization(db, DEMO_ORG)
        org_id = org["id"] if org is not None else await admin.create_organization(db, DEMO_ORG)
        user = await admin.find_user(db, DEMO_EMAIL)
        user_id = (
            user["id"]
            if user is not None
            else await admin.create_user(db, org_id=org_id, email=DEMO_EMAIL, name="Demo user")
        )
        token_path = demo_dir / "token"
        raw = _read_secret(token_path)
        if raw is not None and await admin.token_is_active(db, raw):
            return raw, False
        issued = await admin.create_token(db, user_id=user_id, org_id=org_id, name="demo")
        _write_secret(token_path, issued.token)
        return issued.token, True
    finally:
        await db.dispose()


def demo_tools_config_path(data_dir: Path) -> Path:
    return data_dir / "demo" / "mcp.json"


def write_demo_tools_config(data_dir: Path) -> Path:
    """Write the demo tool server's `PARLEY_MCP_CONFIG` file, `<data_dir>/demo/mcp.json`, with its
    notes in `<data_dir>/demo-tools/`; returns the file's path."""
    path = demo_tools_config_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(demo_config(notes_dir(data_dir)), indent=2) + "\n", encoding="utf-8")
    return path


def notes_dir(data_dir: Path) -> Path:
    """Where the demo tools keep their notes (`notes.jsonl`)."""
    return data_dir / "demo-tools"


def demo_environment(model: LocalModelServer, data_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment parley's settings are read from: openai-compatible, pointed at the local
    model, SQLite under `data_dir`, and the demo tools unless `environ` names tool servers.

    PARLEY_* tuning variables of `environ` pass through, but the provider, database and data
    directory are the demo's own, whatever the shell exports.
    """
    env = {k: v for k, v in environ.items() if k.startswith("PARLEY_")}
    env.setdefault("MCP_LLM_MAX_TOKENS", environ.get("MCP_LLM_MAX_TOKENS", DEMO_MAX_TOKENS))
    if not env.get("PARLEY_MCP_CONFIG", "").strip():
        env["PARLEY_MCP_CONFIG"] = str(write_demo_tools_config(data_dir))
    env.update(
        {
            "PARLEY_ENV": "development",  # production refuses a plain-http loopback model URL
            "PARLEY_DATA_DIR": str(data_dir),
            "MCP_LLM_PROVIDER": "openai-compatible",
            "MCP_LLM_BASE_URL": model.base_url,
            "MCP_LLM_MODEL": model.model,
            "MCP_LLM_API_KEY": model.api_key,
            "MCP_LLM_CONTEXT_WINDOW": str(model.n_ctx),  # its server does not say: the demo knows
        }
    )
    return env


def demo_settings(model: LocalModelServer, data_dir: Path) -> Settings:
    """The demo's settings, from `demo_environment` and this process's environment."""
    return load_settings(demo_environment(model, data_dir, os.environ))


class Watchdog(threading.Thread):
    """Restarts the model server when its process dies, until `halt()`."""

    def __init__(self, model: LocalModelServer, lock: threading.Lock) -> None:
        super().__init__(name="parley-demo-watchdog", daemon=True)
        self.model, self.lock = model, lock
        self.halted = threading.Event()

    def halt(self) -> None:
        self.halted.set()
        self.join(timeout=10)

    def run(self) -> None:
        delay = WATCHDOG_INTERVAL
        while not self.halted.wait(delay):
            with self.lock:
                if self.halted.is_set() or self.model.alive():
                    delay = WATCHDOG_INTERVAL
                    continue
                print("[demo] the local model server died; restarting it…", flush=True)
                try:
                    self.model.restart()
                except ModelServerError as exc:
                    print(f"[demo] restart failed, retrying in 15 s: {exc}", flush=True)
                    delay = 15.0
                    continue
                print(f"[demo] the local model server is back (pid {self.model.pid})", flush=True)
                delay = WATCHDOG_INTERVAL


def _parley_command() -> str:
    """How to run `parley` from here: on PATH, or the script beside this interpreter (.venv/bin)."""
    beside = Path(sys.executable).parent / "parley"
    if shutil.which("parley") == str(beside) or not beside.exists():
        return "parley"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def banner(url: str, token: str, fresh: bool, data_dir: Path, tools_config: Path | None) -> str:
    state = "new token issued" if fresh else "token reused"
    chat = f"{_parley_command()} chat --url {url} --token {token}"
    return f"""
parley demo is running at {url}  (Ctrl-C to stop)
  data:   {data_dir}
  token:  {token}   ({state}; kept in {data_dir / "demo" / "token"})

Chat in a browser: open {url} and paste the token.

Chat in a terminal:
  {chat}
{_tools_help(data_dir, tools_config)}
Or with curl:
  curl -s -X POST {url}/api/v1/ai/sessions -H "Authorization: Bearer {token}" \\
       -H "Content-Type: application/json" -d '{{"title": "hello"}}'
  curl -N -X POST {url}/api/v1/ai/sessions/<id>/messages -H "Authorization: Bearer {token}" \\
       -H "Content-Type: application/json" -d '{{"content": "Hello! Who are you?"}}'
"""


def _tools_help(data_dir: Path, tools_config: Path | None) -> str:
    """How to try the tools parley runs with: the demo's own, or the operator's."""
    if tools_config is None:
        return ""
    if tools_config != demo_tools_config_path(data_dir):
        return f"""
Tools: the servers named in PARLEY_MCP_CONFIG ({tools_config}); `/tools` in the terminal chat lists them.
"""
    return f"""
Try the demo tools (the time, a calculator, notes); the model calls one when you name it:
  in the browser: the tools menu, or type  /tool calculator 2+3*4
  in the terminal chat:
    /tools                     the tools, and which ask before they run
    /tool calculator 2+3*4     the calculator runs at once
    /tool add_note buy milk    asks for your approval first: [y]es / [n]o / [a]lways
  notes are saved in {notes_dir(data_dir) / "notes.jsonl"}
"""


class _Terminated(Exception):
    """SIGTERM arrived: leave through `finally`, so the model server is stopped too."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _hangup_as_terminate(_signum: int, _frame: object) -> None:
    # The terminal went away. Raising here would be swallowed inside the event loop, so take the
    # SIGTERM path instead: parley shuts down gracefully, then `_raise_terminated` runs.
    os.kill(os.getpid(), signal.SIGTERM)


def _announce(host: str, port: int, text: str) -> None:
    """Print the banner once parley answers, so it is not buried under the startup log."""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{probe_host}:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    break
        except (OSError, ValueError):
            pass  # not listening yet
        time.sleep(0.2)
    print(text, flush=True)


def run_demo(*, host: str = "127.0.0.1", port: int = 8000, data_dir: Path | str | None = None) -> int:
    """Run the demo until Ctrl-C; returns the process exit code."""
    from parley.server import run_server  # the web stack is only needed once we really serve

    if data_dir is None:
        data_dir = os.environ.get("PARLEY_DATA_DIR", "").strip() or default_data_dir()
    root = Path(data_dir).expanduser()
    demo_dir = root / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not port_is_free(host, port):
        print(f"parley demo: {host}:{port} is already in use; pick another with --port")
        return 1
    try:
        ensure_local_model(progress=print)
    except (InstallError, ModelServerError) as exc:
        print(f"parley demo: could not install the local model: {exc}")
        return 1

    # uvicorn shuts down on SIGTERM, then re-raises it with whatever handler was there before;
    # with the default one the process would die on the spot and orphan the model server.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated),
        signal.SIGHUP: signal.signal(signal.SIGHUP, _hangup_as_terminate),
    }
    model = LocalModelServer(log_path=demo_dir / "model-server.log", api_key=model_api_key(demo_dir))
    lock = threading.Lock()
    watchdog = Watchdog(model, lock)
    try:
        print(f"Starting the local model (SmolLM2-135M-Instruct) on {model.base_url} …", flush=True)
        model.start()
        settings = demo_settings(model, root)
        token, fresh = asyncio.run(ensure_demo_identity(settings.effective_database_url, demo_dir))
        text = banner(f"http://{host}:{port}", token, fresh, root, settings.mcp_config)
        threading.Thread(target=_announce, args=(host, port, text), daemon=True).start()
        watchdog.start()
        run_server(settings, host, port)
    except ModelServerError as exc:
        print(f"parley demo: the local model server would not start: {exc}")
        return 1
    except ConfigError as exc:
        print("parley demo: invalid configuration:\n  " + "\n  ".join(exc.problems))
        return 1
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        if watchdog.is_alive():
            watchdog.halt()
        with lock:
            model.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("parley demo stopped.", flush=True)
    return 0
