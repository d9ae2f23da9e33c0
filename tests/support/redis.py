"""A throwaway Redis server for the tests: Debian's `redis-server` as our child process, on a
loopback port, with its working directory in a temporary directory.

Nothing is persisted: no RDB snapshots, no append-only file, and `stop()` shuts down without
saving, so a restart on the same port (`start()` again) comes back empty, as a Redis that lost its
memory does. Redis runs fine as root, so it runs as whoever runs the tests. The server is driven
over its own protocol (a few lines below), not through redis-py, so the fixture depends on nothing
but the binary; `missing()` says what to install.

May import the standard library only.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def missing() -> str | None:
    """Why a server cannot be started here, with what to install; None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server not found: install Debian's `redis-server` package (scripts/system-deps.sh)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisCommandError(RuntimeError):
    """Redis answered a command with an error reply."""


def _encode(*args: str) -> bytes:
    # The request form every Redis understands: an array of bulk strings.
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer:
    """One `redis-server` on 127.0.0.1 at a fixed port for its whole life, restartable."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(missing())
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        self.port = _free_port()
        self.config = self.root / "redis.conf"
        self.log = self.root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _write_config(self) -> None:
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f'dir "{self.root}"',
            'save ""',
            "appendonly no",
            # Loopback only, no password: protected mode refuses nothing here but stays the default.
            "protected-mode yes",
            # No fork into the background: stop() and kill() act on the very process we started.
            "daemonize no",
            "supervised no",
            'logfile ""',
            "always-show-logo no",
        ]
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server (again, after stop() or kill(): same port, empty) and wait until it answers."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server exited at start-up:\n{self._log_tail()}")
            with contextlib.suppress(OSError):
                if self.command("PING") == b"PONG":
                    return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer on port {self.port}:\n{self._log_tail()}")

    def command(self, *args: str, timeout: float = 5.0) -> bytes | int | None:
        """Send one command on a fresh connection and read a status, integer or bulk reply (None: nil).

        Enough for controlling the server; tests talk to it through redis-py.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(_encode(*args))
            reader = sock.makefile("rb")
            line = reader.readline()
            if not line:
                raise ConnectionError(f"redis-server closed the connection on {args[0]}")
            kind, rest = line[:1], line[1:].rstrip(b"\r\n")
            if kind == b"+":
                return rest
            if kind == b":":
                return int(rest)
            if kind == b"$":
                size = int(rest)
                return None if size < 0 else reader.read(size + 2)[:size]
            if kind == b"-":
                raise RedisCommandError(rest.decode(errors="replace"))
            raise RedisCommandError(f"unexpected reply to {args[0]}: {line!r}")

    def client_kill(self, client_type: str) -> int:
        """Drop every client connection of a kind (`normal`, `pubsub`, ...); return how many.

        The connection that sends the command is left alone (Redis's SKIPME default).
        """
        killed = self.command("CLIENT", "KILL", "TYPE", client_type)
        assert isinstance(killed, int), killed
        return killed

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down without saving and wait for the process; everything in memory is lost."""
        if self.process is None:
            return
        if self.running:
            # On success Redis exits and closes the connection without a reply.
            with contextlib.suppress(OSError, RedisCommandError):
                self.command("SHUTDOWN", "NOSAVE")
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-flight, as on a crash or an out-of-memory kill."""
        if self.process is None:
            return
        if self.running:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
