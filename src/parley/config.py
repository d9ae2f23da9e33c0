"""Settings from the environment, the cross-field rules, and the boot refusal.

`load_settings()` returns a valid `Settings` or raises `ConfigError` listing *every* offending
variable with its reason, so an operator fixes them all in one go. `describe()` renders the
effective configuration with secrets masked (`parley check-config`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from parley.billing.prices import DEFAULT_ANTHROPIC_MODEL, parse_price_overrides
from parley.errors import ConfigError
from parley.providers.url_policy import check_base_url

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer clearly and concisely. If you do not know something, say so."
)
MAX_CONTENT_CHARS = 10_000


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "parley"


class Settings(BaseSettings):
    """parley's configuration; field aliases are the environment variable names."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    env: Literal["development", "production"] = Field("development", validation_alias="PARLEY_ENV")
    llm_provider: Literal["anthropic", "openai-compatible"] = Field("anthropic", validation_alias="MCP_LLM_PROVIDER")
    llm_base_url: str | None = Field(None, validation_alias="MCP_LLM_BASE_URL")
    llm_api_key: SecretStr | None = Field(None, validation_alias="MCP_LLM_API_KEY")
    llm_model: str | None = Field(None, validation_alias="MCP_LLM_MODEL")
    llm_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="MCP_LLM_ALLOWED_HOSTS"
    )
    llm_max_tokens: int = Field(1024, ge=1, le=1_000_000, validation_alias="MCP_LLM_MAX_TOKENS")
    # The model's context window in tokens (prompt and reply): else asked of the model server, or
    # taken from the Claude model table.
    context_window: int | None = Field(None, ge=512, le=10_000_000, validation_alias="MCP_LLM_CONTEXT_WINDOW")
    # trim: drop the oldest exchanges that do not fit; summarize: and have the model summarize them.
    context_strategy: Literal["trim", "summarize"] = Field("trim", validation_alias="PARLEY_CONTEXT_STRATEGY")
    price_input_per_m_usd: Decimal = Field(Decimal(0), ge=0, validation_alias="MCP_LLM_PRICE_INPUT_PER_M_USD")
    price_output_per_m_usd: Decimal = Field(Decimal(0), ge=0, validation_alias="MCP_LLM_PRICE_OUTPUT_PER_M_USD")
    database_url: str = Field("", validation_alias="DATABASE_URL")
    database_admin_url: str | None = Field(None, validation_alias="DATABASE_ADMIN_URL")
    data_dir: Path = Field(default_factory=default_data_dir, validation_alias="PARLEY_DATA_DIR")
    db_pool_size: int = Field(20, ge=1, le=1000, validation_alias="PARLEY_DB_POOL_SIZE")
    # A revoked token may still be accepted this long by a running server (0: look up every time).
    auth_cache_seconds: float = Field(5.0, ge=0, le=300, validation_alias="PARLEY_AUTH_CACHE_SECONDS")
    # How long a request waits for the database before 503: a pooled connection (PostgreSQL), or
    # the write lock another process holds (SQLite).
    db_pool_timeout_seconds: float = Field(5.0, gt=0, validation_alias="PARLEY_DB_POOL_TIMEOUT_SECONDS")
    # PostgreSQL: the server cancels a statement, or ends a session idle inside a transaction, past
    # this (a request then answers 503), so a stuck query never holds locks or a pooled connection.
    db_statement_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, validation_alias="PARLEY_DB_STATEMENT_TIMEOUT_SECONDS"
    )
    turn_timeout_seconds: float = Field(360.0, gt=0, validation_alias="PARLEY_TURN_TIMEOUT_SECONDS")
    idle_chunk_timeout_seconds: float = Field(120.0, gt=0, validation_alias="PARLEY_IDLE_CHUNK_TIMEOUT_SECONDS")
    connect_timeout_seconds: float = Field(10.0, gt=0, validation_alias="PARLEY_CONNECT_TIMEOUT_SECONDS")
    upstream_retries: int = Field(3, ge=0, le=10, validation_alias="PARLEY_UPSTREAM_RETRIES")
    session_idle_ttl_seconds: float = Field(7200.0, gt=0, validation_alias="PARLEY_SESSION_IDLE_TTL_SECONDS")
    session_max_age_seconds: float = Field(86400.0, gt=0, validation_alias="PARLEY_SESSION_MAX_AGE_SECONDS")
    max_live_sessions: int = Field(200, ge=1, validation_alias="PARLEY_MAX_LIVE_SESSIONS")
    sweep_interval_seconds: float = Field(60.0, gt=0, validation_alias="PARLEY_SWEEP_INTERVAL_SECONDS")
    # How long a turn's lease outlives its last renewal (a running turn renews it every third of
    # this): after a crash, how soon another process takes the turn over.
    turn_lease_seconds: float = Field(20.0, ge=1, le=600, validation_alias="PARLEY_TURN_LEASE_SECONDS")
    redis_url: SecretStr | None = Field(None, validation_alias="PARLEY_REDIS_URL")
    # This machine's name on the leases its processes take (default: the host name).
    node_name: str | None = Field(None, min_length=1, max_length=64, validation_alias="PARLEY_NODE_NAME")
    heartbeat_seconds: float = Field(15.0, gt=0, le=15.0, validation_alias="PARLEY_HEARTBEAT_SECONDS")
    default_max_turns: int = Field(50, ge=1, le=10_000, validation_alias="PARLEY_MAX_TURNS")
    # A reply (one model round) stops past this many characters, its text kept: about 50,000 tokens.
    max_reply_chars: int = Field(200_000, ge=1_000, le=50_000_000, validation_alias="PARLEY_MAX_REPLY_CHARS")
    # Model rounds of one reply that may end in tool calls; the round after answers without tools.
    max_tool_rounds: int = Field(8, ge=1, le=64, validation_alias="PARLEY_MAX_TOOL_ROUNDS")
    # How long a tool call waits for a person's decision before it expires.
    approval_timeout_seconds: float = Field(
        600.0, ge=10, le=7 * 86400, validation_alias="PARLEY_APPROVAL_TIMEOUT_SECONDS"
    )
    system_prompt: str | None = Field(None, validation_alias="PARLEY_SYSTEM_PROMPT")
    system_prompt_file: Path | None = Field(None, validation_alias="PARLEY_SYSTEM_PROMPT_FILE")
    page_context_max_bytes: int = Field(4096, ge=0, le=65536, validation_alias="PARLEY_PAGE_CONTEXT_MAX_BYTES")
    # The request line and headers together (431 past it); checked by the HTTP protocol, before the app.
    max_header_bytes: int = Field(16384, ge=1024, le=1024 * 1024, validation_alias="PARLEY_MAX_HEADER_BYTES")
    # How long a request body may take to arrive once its headers are in (408 past it).
    body_timeout_seconds: float = Field(10.0, gt=0, le=3600, validation_alias="PARLEY_BODY_TIMEOUT_SECONDS")
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="PARLEY_ALLOWED_MODELS"
    )
    # The tool servers (a JSON file in the `mcpServers` shape; docs/tools.md); unset: no tools.
    mcp_config: Path | None = Field(None, validation_alias="PARLEY_MCP_CONFIG")
    # Operations (docs/operations.md): log lines as text or JSON; how long audit events are kept;
    # /metrics on an address of its own (host:port) and/or on the API's port behind a token.
    log_format: Literal["text", "json"] = Field("text", validation_alias="PARLEY_LOG_FORMAT")
    audit_retention_days: int = Field(365, ge=1, le=36500, validation_alias="PARLEY_AUDIT_RETENTION_DAYS")
    metrics_address: str | None = Field(None, validation_alias="PARLEY_METRICS_ADDRESS")
    metrics_token: SecretStr | None = Field(None, validation_alias="PARLEY_METRICS_TOKEN")

    anthropic_api_key: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_model: str = Field(DEFAULT_ANTHROPIC_MODEL, min_length=1, validation_alias="ANTHROPIC_MODEL")
    anthropic_base_url: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    anthropic_max_tokens: int = Field(4096, ge=1, le=1_000_000, validation_alias="ANTHROPIC_MAX_TOKENS")
    anthropic_cache_ttl: Literal["5m", "1h"] = Field("5m", validation_alias="ANTHROPIC_CACHE_TTL")
    anthropic_thinking_budget: int | None = Field(None, ge=1024, validation_alias="ANTHROPIC_THINKING_BUDGET")
    anthropic_prices: str | None = Field(None, validation_alias="ANTHROPIC_PRICES")
    anthropic_fallback_price: str = Field("5,25", validation_alias="ANTHROPIC_FALLBACK_PRICE_PER_M_USD")

    @field_validator("llm_allowed_hosts", "allowed_models", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()]
        return value

    @field_validator(
        "llm_base_url",
        "llm_model",
        "system_prompt",
        "anthropic_base_url",
        "anthropic_prices",
        "mcp_config",
        "metrics_address",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("price_input_per_m_usd", "price_output_per_m_usd", mode="before")
    @classmethod
    def _blank_price_is_zero(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return Decimal(0)
        return value

    # -- derived values ---------------------------------------------------------------------------

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def metrics_listen(self) -> tuple[str, int] | None:
        """(host, port) of PARLEY_METRICS_ADDRESS, or None when unset (or not host:port)."""
        return parse_address(self.metrics_address) if self.metrics_address else None

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'parley.db'}"

    @property
    def model(self) -> str:
        """The default model, stored on sessions that do not ask for another."""
        if self.llm_provider == "anthropic":
            return self.anthropic_model
        return self.llm_model or ""

    @property
    def models(self) -> tuple[str, ...]:
        """Models a session may ask for: the default first, then PARLEY_ALLOWED_MODELS."""
        return tuple(dict.fromkeys([self.model, *self.allowed_models]))

    @property
    def max_output_tokens(self) -> int:
        return self.anthropic_max_tokens if self.llm_provider == "anthropic" else self.llm_max_tokens

    @property
    def prices_are_zero(self) -> bool:
        if self.llm_provider == "anthropic":
            return False  # priced from the Claude table
        return self.price_input_per_m_usd == 0 and self.price_output_per_m_usd == 0

    def fallback_prices(self) -> tuple[Decimal, Decimal]:
        """(input, output) USD per million tokens for Claude models missing from the table."""
        parts = [p.strip() for p in self.anthropic_fallback_price.split(",")]
        try:
            values = tuple(Decimal(p) for p in parts)
        except ArithmeticError:
            values = ()
        if len(values) != 2 or any(not v.is_finite() or v < 0 for v in values):
            raise ValueError(
                f"expected 'input,output' in USD per million tokens, got {self.anthropic_fallback_price!r}"
            )
        return values[0], values[1]

    def resolved_system_prompt(self) -> str:
        if self.system_prompt_file is not None:
            return self.system_prompt_file.read_text(encoding="utf-8").strip()
        return self.system_prompt or DEFAULT_SYSTEM_PROMPT


def _cross_field_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.llm_provider == "anthropic":
        if s.anthropic_api_key is None or not s.anthropic_api_key.get_secret_value().strip():
            problems.append("ANTHROPIC_API_KEY: required when MCP_LLM_PROVIDER=anthropic (the default)")
        if s.anthropic_base_url is not None:
            for reason in check_base_url(
                s.anthropic_base_url, production=s.production, allowed_hosts=s.llm_allowed_hosts
            ):
                problems.append(f"ANTHROPIC_BASE_URL: {reason}")
        try:
            parse_price_overrides(s.anthropic_prices or "", cache_ttl=s.anthropic_cache_ttl)
        except ValueError as exc:
            problems.append(f"ANTHROPIC_PRICES: {exc}")
        try:
            s.fallback_prices()
        except ValueError as exc:
            problems.append(f"ANTHROPIC_FALLBACK_PRICE_PER_M_USD: {exc}")
    else:
        if s.llm_base_url is None:
            problems.append("MCP_LLM_BASE_URL: required when MCP_LLM_PROVIDER=openai-compatible")
        else:
            for reason in check_base_url(s.llm_base_url, production=s.production, allowed_hosts=s.llm_allowed_hosts):
                problems.append(f"MCP_LLM_BASE_URL: {reason}")
        if s.llm_model is None:
            problems.append("MCP_LLM_MODEL: required (non-blank) when MCP_LLM_PROVIDER=openai-compatible")
        if s.llm_api_key is None or not s.llm_api_key.get_secret_value().strip():
            problems.append(
                "MCP_LLM_API_KEY: required (non-blank) when MCP_LLM_PROVIDER=openai-compatible; "
                "servers without auth accept any value"
            )
    if s.system_prompt_file is not None and not s.system_prompt_file.is_file():
        problems.append(f"PARLEY_SYSTEM_PROMPT_FILE: {s.system_prompt_file} is not a readable file")
    redis_url = s.redis_url.get_secret_value() if s.redis_url else ""
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append("PARLEY_REDIS_URL: must start with redis://, rediss:// or unix://")
    url = s.database_url
    if url and not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        problems.append("DATABASE_URL: must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return problems + _metrics_problems(s) + _tool_config_problems(s)


def _metrics_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.metrics_address is not None and s.metrics_listen is None:
        problems.append("PARLEY_METRICS_ADDRESS: expected host:port, such as 127.0.0.1:9464")
    if s.metrics_token is not None and len(s.metrics_token.get_secret_value().strip()) < 16:
        problems.append("PARLEY_METRICS_TOKEN: at least 16 characters (a scraper's bearer token)")
    return problems


def _tool_config_problems(s: Settings) -> list[str]:
    if s.mcp_config is None:
        return []
    from parley.tools.config import config_problems  # the MCP SDK loads only when tools are configured

    return config_problems(s.mcp_config, production=s.production, allowed_hosts=s.llm_allowed_hosts)


def parse_address(text: str) -> tuple[str, int] | None:
    """`host:port` (`[::1]:9464` for IPv6) as (host, port); None when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate settings from `environ` (default: the process environment)."""
    settings = _validated(environ)
    problems = _cross_field_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def load_tool_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for `parley tools`: every variable is checked, but only the tool servers'
    configuration must be complete (the model's settings may be missing)."""
    settings = _validated(environ)
    problems = _tool_config_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _validated(environ: Mapping[str, str] | None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    try:
        return Settings.model_validate(_known_vars(env))
    except ValidationError as exc:
        raise ConfigError([_describe_validation_error(err) for err in exc.errors()]) from exc


def _known_vars(env: Mapping[str, str]) -> dict[str, str]:
    names = {str(f.validation_alias) for f in Settings.model_fields.values()}
    return {k: v for k, v in env.items() if k in names}


def _describe_validation_error(err: Any) -> str:
    field = err["loc"][0] if err["loc"] else "?"
    alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else field
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{alias}: {message} (got {err.get('input')!r})"


def startup_warnings(s: Settings) -> list[str]:
    warnings: list[str] = []
    if s.prices_are_zero:
        warnings.append(
            "MCP_LLM_PRICE_INPUT_PER_M_USD and MCP_LLM_PRICE_OUTPUT_PER_M_USD are both 0: "
            "cost tracking records $0 and budgets are inert."
        )
    if s.production and s.effective_database_url.startswith("sqlite"):
        warnings.append("PARLEY_ENV=production on SQLite: tenant isolation is enforced by parley only.")
    if s.max_output_tokens * 4 > s.max_reply_chars:
        warnings.append(
            f"PARLEY_MAX_REPLY_CHARS ({s.max_reply_chars}) is below what {s.max_output_tokens} output tokens may "
            "hold (about 4 characters each): long replies will stop with reply_too_large."
        )
    return warnings


def describe(s: Settings) -> list[tuple[str, str]]:
    """The effective configuration as (variable, value) rows, secrets masked."""
    rows: list[tuple[str, str]] = []
    for name, field in Settings.model_fields.items():
        alias = str(field.validation_alias)
        value = getattr(s, name)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            shown = "(unset)" if not secret else f"****{secret[-4:]}" if len(secret) >= 12 else "****"
        elif value is None:
            shown = "(unset)"
        elif isinstance(value, list):
            shown = ",".join(value) or "(none)"
        else:
            shown = str(value)
        if name == "database_url":
            shown = _mask_url_password(s.effective_database_url)
        elif name == "database_admin_url" and value is not None:
            shown = _mask_url_password(value)
        rows.append((alias, shown))
    return rows


def _mask_url_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable)"


def database_url_from_env(environ: Mapping[str, str] | None = None, *, admin: bool = False) -> str:
    """The database URL alone (admin commands need no model configuration).

    With `admin`, the owner's URL for migrations and administration (`DATABASE_ADMIN_URL`), falling
    back to `DATABASE_URL`.
    """
    env = dict(os.environ if environ is None else environ)
    if admin and env.get("DATABASE_ADMIN_URL"):
        return env["DATABASE_ADMIN_URL"]
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    data_dir = Path(env["PARLEY_DATA_DIR"]) if env.get("PARLEY_DATA_DIR") else default_data_dir()
    return f"sqlite+aiosqlite:///{data_dir / 'parley.db'}"
