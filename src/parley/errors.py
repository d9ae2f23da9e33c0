"""Every error parley raises on purpose, in one tree.

Leaf module: imports nothing from parley, so every layer may use it. Each class carries, as class
attributes, a stable `code` clients can rely on, the HTTP `status_code` it maps to, and whether a
retry may succeed (`retryable`). The API renders any of them as `{"error": message, "code": code}`;
a turn that fails after its stream started publishes the same pair as an `error` event.

    ParleyError                          500 internal_error
    ├── BadRequestError                  400 bad_request
    │   ├── MalformedJSONError           400 malformed_json
    │   ├── ModelNotAllowedError         400 model_not_allowed
    │   └── ToolUseInHistoryError        400 tool_use_in_history
    ├── ValidationFailedError            422 validation_error
    ├── PayloadTooLargeError             413 content_too_large
    ├── AuthenticationError              401 unauthorized
    ├── BudgetExhaustedError             402 daily_budget_exhausted | monthly_budget_exhausted
    │                                        | budget_insufficient
    ├── PermissionDeniedError            403 forbidden
    │   └── AiDisabledError              403 ai_disabled
    ├── NotFoundError                    404 not_found
    │   └── SessionNotFoundError         404 session_not_found
    ├── ConflictError                    409 conflict
    │   ├── TurnInProgressError          409 turn_in_progress
    │   ├── NoTurnRunningError           409 no_turn_running
    │   ├── SessionClosedError           409 session_closed
    │   └── MaxTurnsReachedError         409 max_turns_reached
    ├── SessionExpiredError              410 session_expired
    ├── RateLimitedError                 429 rate_limited
    ├── NotSupportedOnProviderError      501 NOT_SUPPORTED_ON_PROVIDER
    ├── ServiceUnavailableError          503 service_unavailable
    ├── ProviderError                    502 <kind>  (upstream model server; see ProviderErrorKind)
    └── ConfigError                      (never rendered: refuses boot)
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import ClassVar


class ParleyError(Exception):
    """Base of every deliberate error; unexpected exceptions are rendered as this."""

    code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "Internal error. Please try again."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def error_code(self) -> str:
        """The code as rendered; instances may refine the class code (see ProviderError)."""
        return self.code

    def extra(self) -> dict[str, object]:
        """Fields added to the error envelope beside `error` and `code`."""
        return {}


class BadRequestError(ParleyError):
    """The request is well-formed HTTP but cannot be acted on as sent."""

    code = "bad_request"
    status_code = 400
    default_message = "Bad request."


class MalformedJSONError(BadRequestError):
    """The body is not valid JSON."""

    code = "malformed_json"
    default_message = "The request body is not valid JSON."


class ModelNotAllowedError(BadRequestError):
    """A session asked for a model outside the allowed list."""

    code = "model_not_allowed"

    def __init__(self, model: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"Model {model!r} is not allowed here. Allowed: {', '.join(allowed)}.")


class ToolUseInHistoryError(BadRequestError):
    """The stored history holds tool parts the chat-only path cannot replay."""

    code = "tool_use_in_history"

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"Session {session_id} contains tool-use messages that this provider cannot replay. Start a new session."
        )


class ValidationFailedError(ParleyError):
    """The JSON body or query does not match the schema."""

    code = "validation_error"
    status_code = 422
    default_message = "The request does not match the expected schema."


class PayloadTooLargeError(ParleyError):
    """A message or body exceeds its size limit."""

    code = "content_too_large"
    status_code = 413
    default_message = "The request is too large."


class AuthenticationError(ParleyError):
    """Missing, malformed, unknown, expired or revoked bearer token."""

    code = "unauthorized"
    status_code = 401
    default_message = "A valid bearer token is required."


class PermissionDeniedError(ParleyError):
    """The token is valid but lacks the permission or scope for this action."""

    code = "forbidden"
    status_code = 403
    default_message = "This token is not allowed to do that."


class AiDisabledError(PermissionDeniedError):
    """The organization's AI budget is disabled."""

    code = "ai_disabled"
    default_message = "AI features are disabled for this organization."


class BudgetExhaustedError(ParleyError):
    """The organization's budget cannot pay for this turn (402); `resets_at` says when it can."""

    status_code = 402
    code = "budget_exhausted"

    def __init__(self, message: str, *, code: str, resets_at: datetime) -> None:
        super().__init__(message)
        self._code = code
        self.resets_at = resets_at

    def error_code(self) -> str:
        return self._code

    def extra(self) -> dict[str, object]:
        return {"resetsAt": self.resets_at.isoformat().replace("+00:00", "Z")}


class NotFoundError(ParleyError):
    """The resource does not exist or is not visible to the caller."""

    code = "not_found"
    status_code = 404
    default_message = "Not found."


class SessionNotFoundError(NotFoundError):
    """No session with this id is visible to the caller (foreign sessions look absent)."""

    code = "session_not_found"
    default_message = "Session not found."


class ConflictError(ParleyError):
    """The request conflicts with the current state of the resource."""

    code = "conflict"
    status_code = 409
    default_message = "Conflict."


class TurnInProgressError(ConflictError):
    """A turn is already running on this session (on any server process)."""

    code = "turn_in_progress"
    default_message = "A message is already being processed for this session."


class NoTurnRunningError(ConflictError):
    """Interrupt was asked but no turn is running."""

    code = "no_turn_running"
    default_message = "No turn is running on this session."


class SessionClosedError(ConflictError):
    """The session was closed by its owner and accepts no more messages."""

    code = "session_closed"
    default_message = "This session is closed. Start a new session."


class MaxTurnsReachedError(ConflictError):
    """The session reached its max_turns."""

    code = "max_turns_reached"

    def __init__(self, max_turns: int) -> None:
        super().__init__(f"This session reached its limit of {max_turns} turns. Start a new session.")


class SessionExpiredError(ParleyError):
    """The session passed its idle or age limit."""

    code = "session_expired"
    status_code = 410
    default_message = "This session has expired. Start a new session."


class RateLimitedError(ParleyError):
    """Too many requests; `retry_after` seconds until the next one may pass."""

    code = "rate_limited"
    status_code = 429
    retryable = True
    default_message = "Too many requests."

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def extra(self) -> dict[str, object]:
        return {} if self.retry_after is None else {"retryAfter": math.ceil(self.retry_after)}


class NotSupportedOnProviderError(ParleyError):
    """The route needs a capability the configured provider does not have."""

    code = "NOT_SUPPORTED_ON_PROVIDER"  # kept verbatim: clients of the reference API branch on it
    status_code = 501
    default_message = "This action is not supported on the configured provider."


class ServiceUnavailableError(ParleyError):
    """A dependency (database, capacity) is unavailable for now."""

    code = "service_unavailable"
    status_code = 503
    retryable = True
    default_message = "The service is temporarily unavailable. Please try again."


class ProviderErrorKind(StrEnum):
    """Why a model server call failed; the value is the `code` clients see."""

    UNAVAILABLE = "upstream_unavailable"  # connection refused, DNS, reset before a response
    TIMEOUT = "upstream_timeout"  # no bytes for the idle timeout
    HTTP = "upstream_error"  # non-2xx answer not covered below
    AUTH = "upstream_auth"  # 401/403 from the model server: parley's key is wrong
    RATE_LIMITED = "upstream_rate_limited"  # 429 after retries
    OVERLOADED = "upstream_overloaded"  # 529/503 after retries
    STREAM = "upstream_stream"  # dropped or garbled stream
    TOOL_CALLS_UNSUPPORTED = "tool_calls_unsupported"
    CONTEXT_LENGTH = "context_length"
    TRUNCATED = "truncated"  # stream ended without a finish reason
    MODEL_NOT_FOUND = "model_not_found"
    BAD_REQUEST = "upstream_bad_request"


_PROVIDER_MESSAGES: dict[ProviderErrorKind, str] = {
    ProviderErrorKind.UNAVAILABLE: "The model server is unavailable. Please try again shortly.",
    ProviderErrorKind.TIMEOUT: "The model server stopped responding.",
    ProviderErrorKind.HTTP: "The model server returned an error.",
    ProviderErrorKind.AUTH: "The model server refused parley's credentials. Ask an administrator.",
    ProviderErrorKind.RATE_LIMITED: "The model server is rate limiting requests. Please try again later.",
    ProviderErrorKind.OVERLOADED: "The model server is overloaded. Please try again later.",
    ProviderErrorKind.STREAM: "The connection to the model server broke mid-reply.",
    ProviderErrorKind.TOOL_CALLS_UNSUPPORTED: ("The model tried to call a tool, which this provider does not support."),
    ProviderErrorKind.CONTEXT_LENGTH: (
        "The conversation is longer than the model's context window. Start a new session or send a shorter message."
    ),
    ProviderErrorKind.TRUNCATED: "The model server ended the reply without finishing it.",
    ProviderErrorKind.MODEL_NOT_FOUND: "The configured model does not exist on the model server.",
    ProviderErrorKind.BAD_REQUEST: "The model server rejected the request.",
}

_RETRYABLE_KINDS = frozenset(
    {
        ProviderErrorKind.UNAVAILABLE,
        ProviderErrorKind.TIMEOUT,
        ProviderErrorKind.RATE_LIMITED,
        ProviderErrorKind.OVERLOADED,
        ProviderErrorKind.STREAM,
        ProviderErrorKind.TRUNCATED,
    }
)


class ProviderError(ParleyError):
    """A model server call failed. The message is safe to show; upstream bodies go to the log only."""

    status_code = 502

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or _PROVIDER_MESSAGES[kind])
        self.kind = kind
        self.status = status
        self.retry_after = retry_after

    def error_code(self) -> str:
        return self.kind.value

    @property
    def is_retryable(self) -> bool:
        return self.kind in _RETRYABLE_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.kind.value!r}, status={self.status})"


class ConfigError(Exception):
    """The configuration is invalid; carries every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
