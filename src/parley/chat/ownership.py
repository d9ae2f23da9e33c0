"""Which process holds a turn lease, and whether that process is gone.

Every parley process names itself `<host>/<pid>/<nonce>` and writes that name on the leases it
takes (`ai_sessions.lease_owner`). The nonce is new at every start, so a restarted process on the
same host recognises its dead predecessor's leases even when it got the same process id (a
container's process 1): same host, and either the same pid with another nonce or a pid that no
longer runs. Those leases are recovered at once; a lease of another host is recovered only once
it expires.

Imports: standard library only.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

# The names this process took (tests run several apps in one process: all of them are alive).
_TAKEN_HERE: set[str] = set()


@dataclass(frozen=True, slots=True)
class ProcessName:
    host: str
    pid: int
    nonce: str

    @classmethod
    def current(cls, host: str | None = None) -> ProcessName:
        """This process, on `host` (default: the machine's host name)."""
        name = cls(host or socket.gethostname(), os.getpid(), secrets.token_hex(4))
        _TAKEN_HERE.add(name.nonce)
        return name

    @classmethod
    def parse(cls, text: str | None) -> ProcessName | None:
        parts = (text or "").rsplit("/", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.nonce}"

    @property
    def host_prefix(self) -> str:
        """What the names of this host's processes start with."""
        return f"{self.host}/"

    def outlived(self, other: ProcessName) -> bool:
        """Whether `other` is a process of this host that is gone (a predecessor, or a crashed peer)."""
        if other.host != self.host or other == self:
            return False
        if other.pid == self.pid:
            # This pid, another start: the process that had it before us (a container's process
            # 1), unless this very process took that name too.
            return not (other.pid == os.getpid() and other.nonce in _TAKEN_HERE)
        return not _running(other.pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
