"""The names tools are offered to models under: `<server>__<tool>`, within every provider's rules.

Providers accept `[A-Za-z0-9_-]{1,64}`. A name that fits as it is stays as it is. One that does
not (another character, or too long) becomes its safe characters, cut to leave room, plus `_`
and eight hex digits of a hash of the exact server key and tool name: the same tool always gets
the same name, which is what its pin is stored under. Names that still meet (`a__b` + `c` and
`a` + `b__c`, or a server's own name that looks like a hashed one) all take the hashed form,
and a numbered one if even that meets; the outcome depends only on the set of tools.

Imports: the standard library only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

MAX_NAME = 64
SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HASH_DIGITS = 8


def plain_name(server: str, tool: str) -> str | None:
    """`<server>__<tool>` when it is already a safe name, else None."""
    name = f"{server}{SEPARATOR}{tool}"
    return name if _SAFE.fullmatch(name) else None


def hashed_name(server: str, tool: str) -> str:
    """The safe characters of `<server>__<tool>`, cut to fit, then `_` and a hash of the original."""
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:_HASH_DIGITS]
    safe = _UNSAFE.sub("_", f"{server}{SEPARATOR}{tool}")
    return f"{safe[: MAX_NAME - _HASH_DIGITS - 1]}_{digest}"


def exposed_names(tools: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """A distinct safe name for every (server, tool) pair."""
    pairs = sorted(set(tools))
    names = {pair: plain_name(*pair) or hashed_name(*pair) for pair in pairs}
    holders: dict[str, list[tuple[str, str]]] = {}
    for pair, name in names.items():
        holders.setdefault(name, []).append(pair)
    taken = {name for name, owners in holders.items() if len(owners) == 1}
    for owners in (owners for owners in holders.values() if len(owners) > 1):
        for pair in owners:  # sorted, so the numbering below is the same every time
            name = hashed_name(*pair)
            number = 1
            while name in taken:
                number += 1
                suffix = f"_{number}"
                name = hashed_name(*pair)[: MAX_NAME - len(suffix)] + suffix
            taken.add(name)
            names[pair] = name
    return names
