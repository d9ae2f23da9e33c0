"""Row ids: random (version 4) UUIDs in their usual text form, from a buffer of OS randomness.

A turn makes half a dozen ids (messages, lease, cost rows). `uuid.uuid4()` asks the kernel for 16
bytes each time, and on virtual machines that system call is a good part of an id's cost. Here one
`os.urandom` call serves 256 ids; the bytes are the same CSPRNG output, so the ids are as
unpredictable as uuid4's. A forked child drops the buffer it inherited, so parent and child never
hand out the same id.

Imports: standard library only.
"""

from __future__ import annotations

import os

_BATCH = 16 * 256
_buffer = b""
_offset = _BATCH


def new_id() -> str:
    global _buffer, _offset
    if _offset >= _BATCH:
        _buffer, _offset = os.urandom(_BATCH), 0
    raw = bytearray(_buffer[_offset : _offset + 16])
    _offset += 16
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _forget_after_fork() -> None:
    global _buffer, _offset
    _buffer, _offset = b"", _BATCH


os.register_at_fork(after_in_child=_forget_after_fork)
