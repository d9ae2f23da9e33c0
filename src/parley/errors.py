"""Every error parley raises on purpose, in one tree.

Leaf module: imports nothing from parley, so every layer may use it. Each class carries, as class
attributes, a stable `code` clients can rely on and the HTTP `status_code` it maps to. The API
renders any of them as `{"error": message, "code": code}`; a turn that fails after its stream
started publishes the same pair as an `error` event. `ProviderError.retryable` is the one retry
policy of both providers.

    ParleyError                          500 internal_error
    ├── BadRequestError                  400 bad_request
    │   ├── MalformedJSONError           400 malformed_json
    │   └── ModelNotAllowedError         400 model_not_allowed
    ├── ValidationFailedError            422 validation_error
    ├── PayloadTooLargeError             413 content_too_large
    │   └── MessageTooLongForModelError  413 message_too_long_for_model
    ├── HeaderTooLargeError              431 header_too_large
    ├── RequestTimeoutError              408 request_timeout
    ├── AuthenticationError              401 unauthorized
    ├── BudgetExhaustedError             402 budget_exhausted (a reply cut at its reservation)
    │   ├── DailyBudgetExhaustedError    402 daily_budget_exhausted
    │   ├── MonthlyBudgetExhaustedError  402 monthly_budget_exhausted
    │   └── BudgetInsufficientError      402 budget_insufficient
    ├── PermissionDeniedError            403 forbidden
    │   └── AiDisabledError              403 ai_disabled
    ├── NotFoundError                    404 not_found
    │   ├── SessionNotFoundError         404 session_not_found
    │   ├── ExecutionNotFoundError       404 execution_not_found
    │   └── PlanNotFoundError            404 plan_not_found
    ├── ConflictError                    409 conflict
    │   ├── TurnInProgressError          409 turn_in_progress
    │   ├── NoTurnRunningError           409 no_turn_running
    │   ├── SessionClosedError           409 session_closed
    │   ├── MaxTurnsReachedError         409 max_turns_reached
    │   ├── ApprovalPendingError         409 approval_pending
    │   └── AlreadyDecidedError          409 already_decided
    ├── SessionExpiredError              410 session_expired
    ├── RateLimitedError                 429 rate_limited
    ├── MethodNotAllowedError            405 method_not_allowed
    ├── HttpError                        4xx/5xx http_error (any other HTTP-level refusal)
    ├── NotSupportedOnProviderError      501 NOT_SUPPORTED_ON_PROVIDER
    ├── ToolRoundLimitError              500 tool_round_limit (an error event only)
    ├── ReplyTooLargeError               500 reply_too_large (an error event only)
    ├── TurnTimeoutError                 504 turn_timeout
    ├── ServerRestartingError            503 server_restarting
    ├── TurnLostError                    503 turn_lost
    ├── ResumeUnavailableError           503 resume_unavailable
    ├── ServiceUnavailableError          503 service_unavailable
    │   └── NotReadyError                503 not_ready (/readyz, with the reasons)
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


class HeaderTooLargeError(ParleyError):
    """The request line and headers exceed the server's limit (answered before the app runs)."""

    code = "header_too_large"
    status_code = 431
    default_message = "The request headers are too large."


class RequestTimeoutError(ParleyError):
    """The client announced a body and stopped sending it before the body read timeout."""

    code = "request_timeout"
    status_code = 408
    default_message = "The request body did not arrive in time."


class MessageTooLongForModelError(PayloadTooLargeError):
    """The message, with the system prompt and room for a reply, does not fit the model's window."""

    code = "message_too_long_for_model"

    def __init__(self, window: int) -> None:
        super().__init__(
            f"This message is too long for the model, which sees {window:,} tokens at once (the reply included). "
            "Send a shorter message."
        )


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
    """The organization's budget cannot pay for this turn (402); `resets_at` says when it can.

    Also the end of a reply cut at what its reservation covers (a server that ignores max_tokens).
    """

    status_code = 402
    code = "budget_exhausted"
    default_message = "The reply was stopped: it reached what the organization's budget allows."

    def __init__(self, message: str | None = None, *, resets_at: datetime | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at

    def extra(self) -> dict[str, object]:
        return {} if self.resets_at is None else {"resetsAt": self.resets_at.isoformat().replace("+00:00", "Z")}


class DailyBudgetExhaustedError(BudgetExhaustedError):
    code = "daily_budget_exhausted"


class MonthlyBudgetExhaustedError(BudgetExhaustedError):
    code = "monthly_budget_exhausted"


class BudgetInsufficientError(BudgetExhaustedError):
    """What remains cannot pay for even a minimal reply to this conversation."""

    code = "budget_insufficient"


class NotFoundError(ParleyError):
    """The resource does not exist or is not visible to the caller."""

    code = "not_found"
    status_code = 404
    default_message = "Not found."


class SessionNotFoundError(NotFoundError):
    """No session with this id is visible to the caller (foreign sessions look absent)."""

    code = "session_not_found"
    default_message = "Session not found."


class ExecutionNotFoundError(NotFoundError):
    """No tool call with this id in this session."""

    code = "execution_not_found"
    default_message = "No tool call with this id in this session."


class PlanNotFoundError(NotFoundError):
    """The session has no plan in the state the request needs."""

    code = "plan_not_found"
    default_message = "This session has no plan waiting for approval."


class ConflictError(ParleyError):
    """The request conflicts with the current state of the resource."""

    code = "conflict"
    status_code = 409
    default_message = "Conflict."


class TurnInProgressError(ConflictError):
    """A turn is already running on this session (on any server process); `lease` is the lease
    that holds it, when the refusal read it."""

    code = "turn_in_progress"
    default_message = "A message is already being processed for this session."

    def __init__(self, message: str | None = None, *, lease: object = None) -> None:
        super().__init__(message)
        self.lease = lease


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


class ApprovalPendingError(ConflictError):
    """Tool calls of the last reply wait for a decision: decide them before sending more."""

    code = "approval_pending"
    default_message = "Tool calls of the last reply are waiting for your decision. Approve or deny them first."


class AlreadyDecidedError(ConflictError):
    """The tool call was already decided, expired, or ran."""

    code = "already_decided"

    def __init__(self, status: str) -> None:
        reasons = {
            "expired": "It expired before a decision.",
            "approved": "It was already approved.",
            "denied": "It was already denied.",
        }
        super().__init__(f"This tool call is not waiting for a decision. {reasons.get(status, 'It already ran.')}")
        self.status = status

    def extra(self) -> dict[str, object]:
        return {"status": self.status}


class SessionExpiredError(ParleyError):
    """The session passed its idle or age limit."""

    code = "session_expired"
    status_code = 410
    default_message = "This session has expired. Start a new session."


class RateLimitedError(ParleyError):
    """Too many requests; `retry_after` seconds until the next one may pass."""

    code = "rate_limited"
    status_code = 429
    default_message = "Too many requests."

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def extra(self) -> dict[str, object]:
        return {} if self.retry_after is None else {"retryAfter": math.ceil(self.retry_after)}


class MethodNotAllowedError(ParleyError):
    """The route exists but not for this HTTP method."""

    code = "method_not_allowed"
    status_code = 405
    default_message = "Method Not Allowed"


class HttpError(ParleyError):
    """A refusal at the HTTP level with no more specific class; the status is the instance's."""

    code = "http_error"

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message or "Request failed.")
        self.status = status

    @property
    def status_code(self) -> int:  # type: ignore[override]
        return self.status


def error_for_status(status: int, message: str | None = None) -> ParleyError:
    """The error of the tree for an HTTP status the web framework refused a request with."""
    known: dict[int, type[ParleyError]] = {
        401: AuthenticationError,
        404: NotFoundError,
        405: MethodNotAllowedError,
        413: PayloadTooLargeError,
    }
    if status in known:
        return known[status](message)
    return HttpError(status, message)


class NotSupportedOnProviderError(ParleyError):
    """The route needs a capability the configured provider does not have."""

    code = "NOT_SUPPORTED_ON_PROVIDER"  # kept verbatim: clients of the reference API branch on it
    status_code = 501
    default_message = "This action is not supported on the configured provider."


class ReplyTooLargeError(ParleyError):
    """The reply passed the size a reply may have (PARLEY_MAX_REPLY_CHARS); what came is kept."""

    code = "reply_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The reply was stopped at {limit:,} characters, the most one reply may have here.")


class ToolRoundLimitError(ParleyError):
    """The model kept calling tools past the turn's limit of rounds."""

    code = "tool_round_limit"

    def __init__(self, max_rounds: int) -> None:
        super().__init__(
            f"The assistant used tools {max_rounds} times in a row without answering, the most one reply allows. "
            "Send a message to let it go on."
        )


class TurnTimeoutError(ParleyError):
    """The model took longer than the turn timeout."""

    code = "turn_timeout"
    status_code = 504
    default_message = "The model took too long. Please try again."


class ServerRestartingError(ParleyError):
    """The server stopped the turn because it is shutting down."""

    code = "server_restarting"
    status_code = 503
    default_message = "The server is restarting. Please send your message again."


class TurnLostError(ParleyError):
    """The process running the turn stopped without ending it; what it had streamed is stored."""

    code = "turn_lost"
    status_code = 503
    default_message = "The server running this reply stopped. What arrived is saved; please send your message again."


class ResumeUnavailableError(ParleyError):
    """The turn runs on another server process and this one cannot relay it (no Redis)."""

    code = "resume_unavailable"
    status_code = 503
    default_message = "This reply is being streamed by another server and cannot be resumed here. Try again shortly."


class ServiceUnavailableError(ParleyError):
    """A dependency (database, capacity) is unavailable for now."""

    code = "service_unavailable"
    status_code = 503
    default_message = "The service is temporarily unavailable. Please try again."


class NotReadyError(ServiceUnavailableError):
    """`/readyz`: the database, its schema or the model server is not usable; `reasons` say which."""

    code = "not_ready"
    default_message = "parley is not ready."

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("Not ready: " + "; ".join(reasons) + ".")
        self.reasons = reasons

    def extra(self) -> dict[str, object]:
        return {"reasons": self.reasons}


class ProviderErrorKind(StrEnum):
    """Why a model server call failed; the value is the `code` clients see."""

    UNAVAILABLE = "upstream_unavailable"  # connection refused, DNS, reset before a response
    TIMEOUT = "upstream_timeout"  # no bytes for the idle timeout
    HTTP = "upstream_error"  # non-2xx answer not covered below
    AUTH = "upstream_auth"  # 401/403 from the model server: parley's key is wrong
    RATE_LIMITED = "upstream_rate_limited"  # 429 after retries
    OVERLOADED = "upstream_overloaded"  # 529/503 after retries
    STREAM = "upstream_stream"  # dropped or garbled stream
    TOOLS_UNSUPPORTED = "tools_unsupported"  # the model server refuses tool calling
    CONTEXT_LENGTH = "context_length"
    TRUNCATED = "truncated"  # stream ended without a finish reason
    MODEL_NOT_FOUND = "model_not_found"
    BAD_REQUEST = "upstream_bad_request"
    PROTOCOL = "upstream_protocol"  # a 2xx answer that is no reply stream (a web page, say)


_PROVIDER_MESSAGES: dict[ProviderErrorKind, str] = {
    ProviderErrorKind.UNAVAILABLE: "The model server is unavailable. Please try again shortly.",
    ProviderErrorKind.TIMEOUT: "The model server stopped responding.",
    ProviderErrorKind.HTTP: "The model server returned an error.",
    ProviderErrorKind.AUTH: "The model server refused parley's credentials. Ask an administrator.",
    ProviderErrorKind.RATE_LIMITED: "The model server is rate limiting requests. Please try again later.",
    ProviderErrorKind.OVERLOADED: "The model server is overloaded. Please try again later.",
    ProviderErrorKind.STREAM: "The connection to the model server broke mid-reply.",
    ProviderErrorKind.TOOLS_UNSUPPORTED: (
        "The model server does not support tool calling; ask the operator to enable it or to remove the tool servers."
    ),
    ProviderErrorKind.CONTEXT_LENGTH: (
        "The conversation is longer than the model's context window. Start a new session or send a shorter message."
    ),
    ProviderErrorKind.TRUNCATED: "The model server ended the reply without finishing it.",
    ProviderErrorKind.MODEL_NOT_FOUND: "The configured model does not exist on the model server.",
    ProviderErrorKind.BAD_REQUEST: "The model server rejected the request.",
    ProviderErrorKind.PROTOCOL: (
        "The model server's address answered with something that is not a model's reply. Ask an administrator "
        "to check the model server's URL."
    ),
}

# Which failures of a model server may succeed on a second try (only ever before anything of the
# reply was passed on): by HTTP status when there is one, else by kind (a refused connection, an
# overloaded, rate-limited or failing server reported inside the stream).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
RETRY_KINDS = frozenset(
    {
        ProviderErrorKind.UNAVAILABLE,
        ProviderErrorKind.OVERLOADED,
        ProviderErrorKind.RATE_LIMITED,
        ProviderErrorKind.HTTP,
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
        window: int | None = None,
    ) -> None:
        super().__init__(message or _PROVIDER_MESSAGES[kind])
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.window = window  # the context window a CONTEXT_LENGTH answer stated, if it did

    def error_code(self) -> str:
        return self.kind.value

    @property
    def retryable(self) -> bool:
        """Whether a second try may succeed (`RETRY_STATUSES`, `RETRY_KINDS`)."""
        if self.status is not None:
            return self.status in RETRY_STATUSES
        return self.kind in RETRY_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.kind.value!r}, status={self.status})"


class ConfigError(Exception):
    """The configuration is invalid; carries every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
