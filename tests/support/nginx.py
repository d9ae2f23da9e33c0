"""Debian's nginx as a load balancer for the tests: our child process, round robin over loopback
backends, everything it writes (pid, logs, temporary files) inside a temporary directory.

The proxy settings are those docs/deploy.md gives operators for several parley processes:
HTTP/1.1 with keep-alive to the backends, no buffering in either direction (a response is read
from the backend only as fast as the client takes it; a request body passes as it arrives), and
read/send timeouts far above parley's 15 s heartbeat. As root, nginx
switches its worker to `nobody`, which is then given the temporary directory; as anyone else the
worker stays that user. `missing()` says what to install.

May import the standard library only.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

NGINX = Path("/usr/sbin/nginx")
WORKER_USER_WHEN_ROOT = "nobody"

# One directive per line inside `location /`; docs/deploy.md shows the same block to operators.
PROXY_DIRECTIVES = (
    "proxy_pass http://parley;",
    "proxy_http_version 1.1;",
    'proxy_set_header Connection "";',
    "proxy_set_header Host $host;",
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "proxy_set_header X-Forwarded-Proto $scheme;",
    "proxy_buffering off;",
    "proxy_request_buffering off;",
    "proxy_read_timeout 1h;",
    "proxy_send_timeout 1h;",
)


def missing() -> str | None:
    """Why nginx cannot be started here, with what to install; None when it can."""
    if not NGINX.exists():
        return f"{NGINX} not found: install Debian's `nginx` package (scripts/system-deps.sh)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_backend(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        raise ValueError(f"backends are 127.0.0.1:port addresses, not {address!r}")
    return address


class NginxBalancer:
    """nginx on 127.0.0.1 at a fixed port, spreading requests round robin over `backends`."""

    def __init__(self, backends: Sequence[str]) -> None:
        if not NGINX.exists():
            raise RuntimeError(missing())
        if not backends:
            raise ValueError("nginx needs at least one backend")
        self.backends = [_loopback_backend(address) for address in backends]
        self.root = Path(tempfile.mkdtemp(prefix="parley-nginx-"))
        self.port = _free_port()
        self.config = self.root / "nginx.conf"
        self.error_log = self.root / "error.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.worker = self._worker_user()
        if self.worker is not None:
            # The worker opens the temporary files; mkdtemp's directory is private to root.
            shutil.chown(self.root, self.worker[0], self.worker[1])
        self.config.write_text(self._render())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _worker_user() -> tuple[str, str] | None:
        if os.geteuid() != 0:
            return None
        entry = pwd.getpwnam(WORKER_USER_WHEN_ROOT)
        # Named explicitly: Debian has no group called `nobody`, which nginx would assume.
        return entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name

    def _render(self) -> str:
        root = self.root
        user = f"user {self.worker[0]} {self.worker[1]};\n" if self.worker is not None else ""
        servers = "".join(f"        server {address};\n" for address in self.backends)
        proxy = "".join(f"            {directive}\n" for directive in PROXY_DIRECTIVES)
        return (
            f"{user}"
            "worker_processes 1;\n"
            f"pid {root}/nginx.pid;\n"
            f"lock_file {root}/nginx.lock;\n"
            f"error_log {self.error_log} notice;\n"
            "events {\n"
            "    worker_connections 1024;\n"
            "}\n"
            "http {\n"
            f"    access_log {root}/access.log;\n"
            f"    client_body_temp_path {root}/client_body;\n"
            f"    proxy_temp_path {root}/proxy;\n"
            f"    fastcgi_temp_path {root}/fastcgi;\n"
            f"    uwsgi_temp_path {root}/uwsgi;\n"
            f"    scgi_temp_path {root}/scgi;\n"
            "    upstream parley {\n"
            f"{servers}"
            "        keepalive 16;\n"
            "    }\n"
            "    server {\n"
            f"        listen 127.0.0.1:{self.port};\n"
            "        location / {\n"
            f"{proxy}"
            "        }\n"
            "    }\n"
            "}\n"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> NginxBalancer:
        """Start nginx in the foreground and wait until its port accepts connections."""
        if self.running:
            raise RuntimeError(f"nginx on port {self.port} is already running")
        command = [str(NGINX), "-p", f"{self.root}/", "-e", str(self.error_log), "-c", str(self.config)]
        # Its own session, so that a stuck master and its worker can be ended together.
        with (self.root / "stderr.log").open("ab") as output:
            self.process = subprocess.Popen(
                [*command, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"nginx exited at start-up:\n{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nginx did not accept connections on port {self.port}:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (open connections are closed, not drained); the worker goes with the master."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self, lines: int = 30) -> str:
        text = ""
        for log in (self.root / "stderr.log", self.error_log):
            with contextlib.suppress(OSError):
                text += log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(no log)"
