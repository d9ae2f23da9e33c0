"""Row ids: random (version 4) UUIDs in their usual text form.

Random, not time-ordered (version 7): nothing sorts by id (messages by their position, sessions by
their activity), and an id that says when a row was made tells a client more than it needs.

Imports: standard library only.
"""

from __future__ import annotations

import uuid


def new_id() -> str:
    return str(uuid.uuid4())
