"""The errors a demo tool reports to its caller, as an MCP tool error rather than a crash.

    DemoToolError           a call the tool cannot carry out; the message says why
     └── CalculationError   an expression that does not parse or evaluate; carries the position

The server turns any `DemoToolError` into a tool result with `isError` set and the message as
its text, so a person or a model reading it can correct the call. Anything else that escapes a
tool is a bug in the tool: it is reported as an internal error, its details only in the log.

May import: the standard library only.
"""

from __future__ import annotations


class DemoToolError(Exception):
    """A call the tool cannot carry out (bad arguments, a full disk); `message` is shown as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CalculationError(DemoToolError):
    """An expression that does not parse or evaluate; `position` counts characters from 1."""

    def __init__(self, what: str, position: int | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{what}{where}")
        self.what = what
        self.position = position
