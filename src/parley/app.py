"""create_app(settings): wires the store, provider, session manager and routes.

The lifespan owns every long-lived resource (engine, upstream HTTP pool, background maintenance)
and closes them in reverse order; running turns are stopped and persisted on shutdown. The
request context (request id, client address) is the outermost layer, outside even the handler of
unexpected errors, so every answer carries `X-Request-ID` (`api/request_context.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley import __version__
from parley.api import admin, operations
from parley.api.auth import PrincipalCache
from parley.api.errors import error_response, install_error_handlers
from parley.api.openapi import install_openapi
from parley.api.request_context import RequestContextMiddleware
from parley.api.routes import Services, router, send_message_route
from parley.billing.cost import Prices
from parley.billing.prices import claude_prices, parse_price_overrides, prices_for
from parley.bus.redis import open_relay
from parley.chat import upkeep
from parley.chat.approvals import ApprovalDesk
from parley.chat.budgets import BudgetService
from parley.chat.catalog import NewSessionDefaults, SessionCatalog
from parley.chat.context import resolve_tokens_per_char, resolve_window
from parley.chat.ownership import ProcessName
from parley.chat.review import ReviewDesk
from parley.chat.sessions import SessionManager, SessionPolicy
from parley.config import MAX_CONTENT_CHARS, Settings, startup_warnings
from parley.errors import PayloadTooLargeError, RequestTimeoutError
from parley.providers.base import Provider
from parley.providers.eager_body import use_eager_body_writes
from parley.store.db import Database, head_revision
from parley.store.postgres import app_role_problems
from parley.store.tenancy import Tenant
from parley.tools import ToolCatalog
from parley.web import mount_web

log = logging.getLogger("parley")
MAX_BODY_BYTES = 256 * 1024


def build_provider(settings: Settings) -> Provider:
    """The provider MCP_LLM_PROVIDER names; each path has its own route test."""
    from parley.providers.http import UpstreamOptions

    options = UpstreamOptions(
        connect_timeout=settings.connect_timeout_seconds,
        idle_timeout=settings.idle_chunk_timeout_seconds,
        max_retries=settings.upstream_retries,
    )
    if settings.llm_provider == "anthropic":
        from parley.providers.anthropic import DEFAULT_ANTHROPIC_BASE_URL, AnthropicProvider

        assert settings.anthropic_api_key is not None, "validated by load_settings"
        return AnthropicProvider(
            api_key=settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url or DEFAULT_ANTHROPIC_BASE_URL,
            options=options,
            cache_ttl=settings.anthropic_cache_ttl,
            thinking_budget=settings.anthropic_thinking_budget,
            default_max_tokens=settings.anthropic_max_tokens,
        )
    from parley.providers.openai_compatible import OpenAICompatibleProvider

    assert settings.llm_base_url is not None, "validated by load_settings"
    assert settings.llm_api_key is not None, "validated by load_settings"
    return OpenAICompatibleProvider(
        base_url=settings.llm_base_url, api_key=settings.llm_api_key.get_secret_value(), options=options
    )


def price_lookup(settings: Settings) -> Callable[[str], Prices]:
    """Prices by model id: the configured flat prices, or the Claude table for Anthropic."""
    if settings.llm_provider != "anthropic":
        flat = Prices.flat(settings.price_input_per_m_usd, settings.price_output_per_m_usd)
        return lambda _model: flat
    ttl = settings.anthropic_cache_ttl
    overrides = parse_price_overrides(settings.anthropic_prices or "", cache_ttl=ttl)
    fallback = claude_prices(*settings.fallback_prices(), cache_ttl=ttl)
    known: dict[str, Prices] = {}

    def lookup(model: str) -> Prices:
        if model not in known:  # warns once per unknown model, not once per turn
            known[model] = prices_for(model, overrides=overrides, fallback=fallback, warn=log.warning, cache_ttl=ttl)
        return known[model]

    for model in settings.models:
        lookup(model)
    return lookup


async def prepare_database(db: Database, settings: Settings) -> None:
    """SQLite migrates itself; PostgreSQL must be reachable, migrated, and safe for RLS."""
    if db.dialect == "sqlite":
        await db.migrate()  # an embedded database migrates itself on first start
        return
    await db.wait_until_reachable()
    revision = await db.schema_revision()
    if revision != head_revision():
        raise RuntimeError(
            f"the database schema is at revision {revision or 'none'}, parley needs {head_revision()}: "
            "run `parley migrate` (with DATABASE_ADMIN_URL set to the owner's URL)"
        )
    async with db.unit(Tenant.system(), readonly=True) as tx:
        problems = await app_role_problems(tx)
    for problem in problems:
        log.warning("row-level security: %s", problem)
    if problems and settings.production:
        raise RuntimeError("refusing to start in production: " + "; ".join(problems))


def create_app(
    settings: Settings,
    *,
    provider: Provider | None = None,
    clock: Callable[[], datetime] | None = None,
    lease_ttl: timedelta | None = None,
    tools: ToolCatalog | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for warning in startup_warnings(settings):
            log.warning("%s", warning)
        db = Database(
            settings.effective_database_url,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
        )
        await prepare_database(db, settings)
        upstream = provider or build_provider(settings)
        policy = SessionPolicy(
            model=settings.model,
            max_tokens=settings.max_output_tokens,
            max_content_chars=MAX_CONTENT_CHARS,
            turn_timeout=settings.turn_timeout_seconds,
            idle_ttl=timedelta(seconds=settings.session_idle_ttl_seconds),
            max_age=timedelta(seconds=settings.session_max_age_seconds),
            max_live_sessions=settings.max_live_sessions,
            lease_ttl=lease_ttl or timedelta(seconds=settings.turn_lease_seconds),
            prices=price_lookup(settings),
            max_tool_rounds=settings.max_tool_rounds,
            approval_ttl=timedelta(seconds=settings.approval_timeout_seconds),
            max_reply_chars=settings.max_reply_chars,
            context_strategy=settings.context_strategy,
            # Anthropic caches the prompt's prefix: drop old exchanges eight at a time so it stays put.
            context_block=8 if settings.llm_provider == "anthropic" else 1,
        )
        now = clock or (lambda: datetime.now(UTC))
        catalog_of_tools = tools or ToolCatalog.from_config_file(
            settings.mcp_config,
            production=settings.env == "production",
            allowed_hosts=settings.llm_allowed_hosts,
        )
        await catalog_of_tools.start(db)
        manager = SessionManager(
            db=db,
            provider=upstream,
            policy=policy,
            clock=now,
            process=ProcessName.current(settings.node_name),
            tools=catalog_of_tools,
        )
        manager.window = await resolve_window(
            configured=settings.context_window,
            provider=upstream,
            provider_name=settings.llm_provider,
            model=settings.model,
        )
        if manager.window is None:
            log.warning(
                "the model's context window is unknown (set MCP_LLM_CONTEXT_WINDOW): histories are sent whole "
                "until the model server says a prompt is too long"
            )
        else:
            log.info("context window: %d tokens (%s)", manager.window.tokens, manager.window.source)
            ratio = await resolve_tokens_per_char(upstream, settings.model)
            if ratio is not None:
                manager.tokens_per_char = ratio
                log.info("tokens per character: %.3f (the model server's tokenizer, with a margin)", ratio)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        manager.relay = await open_relay(redis_url, process=manager.owner, on_control=manager.on_control)
        await upkeep.recover_orphans(manager, at_start=True)  # a predecessor's turns, at once
        catalog = SessionCatalog(
            db,
            NewSessionDefaults(
                model=settings.model,
                system_prompt=settings.resolved_system_prompt(),
                max_turns=settings.default_max_turns,
                allowed_models=settings.models,
            ),
            clock=now,
        )
        app.state.services = Services(
            db=db,
            sessions=manager,
            approvals=ApprovalDesk(manager),
            catalog=catalog,
            budgets=BudgetService(db, catalog, clock=now),
            review=ReviewDesk(db, clock=now),
            readiness=operations.Readiness(db, upstream),
            auth_cache=PrincipalCache(ttl=settings.auth_cache_seconds),
            heartbeat=settings.heartbeat_seconds,
            page_context_max_bytes=settings.page_context_max_bytes,
            provider_name=settings.llm_provider,
            clock=now,
        )
        background = asyncio.create_task(
            upkeep.run(manager, settings.sweep_interval_seconds, audit_retention_days=settings.audit_retention_days)
        )
        log.info("parley %s ready: provider=%s model=%s", __version__, settings.llm_provider, settings.model)
        # On Python 3.11, model requests would otherwise leave one loop round late.
        restore_task_factory = use_eager_body_writes(asyncio.get_running_loop())
        try:
            yield
        finally:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            await manager.shutdown()
            if manager.relay is not None:
                await manager.relay.close()
            if tools is None:
                await catalog_of_tools.aclose()
            if provider is None:
                await upstream.aclose()
            await db.dispose()
            restore_task_factory()

    app = ParleyApp(
        title="parley",
        version=__version__,
        summary="Multi-tenant AI chat sessions streamed over server-sent events.",
        lifespan=lifespan,
        # Starlette would answer `/static` or `/api/v1/ai/sessions/` with a redirect to an absolute
        # URL built from the client's Host header; every path has one spelling here, the rest 404.
        redirect_slashes=False,
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(admin.router)
    app.include_router(operations.router)
    app.router.routes.insert(0, send_message_route)  # first: every turn matches it before the others
    install_openapi(app, models=settings.models)
    if settings.metrics_token is not None:
        operations.install_metrics_route(app, settings.metrics_token.get_secret_value())

    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES, timeout=settings.body_timeout_seconds)
    mount_web(app)
    return app


class ParleyApp(FastAPI):
    """FastAPI with the request context outside its whole middleware stack (see the docstring)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContextMiddleware(super().build_middleware_stack())


class BodyLimitMiddleware:
    """Read every request body before the app, within limits: larger than `max_bytes` is 413 (by
    Content-Length before reading, by counting for chunked bodies, which announce no length), and
    a body that has not arrived `timeout` seconds after the headers is 408. Without the deadline, a
    client that sends less than its Content-Length holds the request open for as long as it likes.

    Bodies are small (`MAX_BODY_BYTES`): the app gets the one read here, replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _too_large(self) -> JSONResponse:
        return error_response(PayloadTooLargeError(f"The request body is larger than {self.max_bytes} bytes."))

    def _too_slow(self) -> JSONResponse:
        error = RequestTimeoutError(f"The request body did not arrive within {self.timeout:g} seconds.")
        return error_response(error, {"Connection": "close"})  # the rest of the body is never read

    async def _read(self, receive: Receive) -> bytes | None:
        """The body, or None if the client left; stops reading once it is past the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) == 0:
                await self.app(scope, receive, send)  # no body (an invalid length never gets here)
                return
            if int(length) > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        elif b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except TimeoutError:
            await self._too_slow()(scope, receive, send)
            return
        if body is None:
            return  # the client left
        if len(body) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnect notifications
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
