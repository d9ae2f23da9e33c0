"""The `parley` command: serve, migrate, check-config, orgs, users, tokens, budget, tools, chat, demo."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, TypeVar, cast

import typer

from parley.config import Settings, database_url_from_env, describe, load_settings, startup_warnings
from parley.errors import ConfigError
from parley.store.db import Database
from parley.store.tenancy import Scope

app = typer.Typer(help="parley: a self-hostable AI-assistant backend.", no_args_is_help=True, add_completion=False)
orgs = typer.Typer(help="Manage organizations.", no_args_is_help=True)
users = typer.Typer(help="Manage users.", no_args_is_help=True)
tokens = typer.Typer(help="Issue, list and revoke API tokens.", no_args_is_help=True)
budget = typer.Typer(help="Show and set an organization's AI budget and rate limits.", no_args_is_help=True)
app.add_typer(budget, name="budget")
app.add_typer(orgs, name="orgs")
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
tools = typer.Typer(help="The tools of the configured MCP servers (PARLEY_MCP_CONFIG).", no_args_is_help=True)
app.add_typer(tools, name="tools")

if TYPE_CHECKING:
    from parley.chat.budgets import BudgetService, BudgetView
    from parley.chat.catalog import Caller
    from parley.tools import CatalogDescription, ToolCatalog

T = TypeVar("T")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"parley: {message}", err=True)
    return typer.Exit(code)


def _config_problems(exc: ConfigError) -> None:
    typer.echo("parley: the configuration is invalid; fix these environment variables:", err=True)
    for problem in exc.problems:
        typer.echo(f"  - {problem}", err=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="PARLEY_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PARLEY_PORT", help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        int, typer.Option(envvar="PARLEY_WORKERS", min=1, max=64, help="Server processes on this port.")
    ] = 1,
) -> None:
    """Run the HTTP API (configuration from the environment; see `parley check-config`)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _config_problems(exc)
        raise typer.Exit(2) from exc
    from parley.server import run_server

    run_server(settings, host, port, log_level=log_level, workers=workers)


@app.command("check-config")
def check_config() -> None:
    """Print the effective configuration (secrets masked) and whether it is valid."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _config_problems(exc)
        raise typer.Exit(2) from exc
    rows = [*describe(settings), ("context window", _window_line(settings))]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name.ljust(width)}  {value}")
    for warning in startup_warnings(settings):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo("configuration OK")


def _window_line(settings: Settings) -> str:
    """The model's context window and where it comes from (the model server is asked if need be)."""
    from parley.app import build_provider
    from parley.chat.context import resolve_tokens_per_char, resolve_window

    async def ask() -> str:
        provider = build_provider(settings)
        try:
            window = await resolve_window(
                configured=settings.context_window,
                provider=provider,
                provider_name=settings.llm_provider,
                model=settings.model,
            )
            ratio = await resolve_tokens_per_char(provider, settings.model) if window is not None else None
        finally:
            await provider.aclose()
        if window is None:
            return "unknown: the model server does not say (set MCP_LLM_CONTEXT_WINDOW)"
        counted = f"; {ratio:.3f} tokens per character, from its tokenizer" if ratio is not None else ""
        return f"{window.tokens:,} tokens, from {window.source}{counted}"

    return asyncio.run(ask())


def _run(fn: Callable[..., Awaitable[T]], *args: object, **kwargs: object) -> T:
    from parley.store.admin import open_database

    async def go() -> T:
        db = await open_database(database_url_from_env(admin=True))
        try:
            return await fn(db, *args, **kwargs)
        finally:
            await db.dispose()

    return asyncio.run(go())


@app.command()
def migrate() -> None:
    """Create or upgrade the schema; on PostgreSQL also create/grant the app role.

    Runs as DATABASE_ADMIN_URL (the tables' owner) when set; the role of DATABASE_URL gets
    exactly the grants it needs and must not own the tables.
    """
    from parley.store.db import Database

    async def go() -> list[str]:
        app_url = database_url_from_env()
        admin_url = database_url_from_env(admin=True)
        db = Database(app_url)
        try:
            return await db.migrate(admin_url=admin_url if admin_url != app_url else None)
        finally:
            await db.dispose()

    for line in asyncio.run(go()):
        typer.echo(line)


@orgs.command("create")
def orgs_create(name: str, partner: Annotated[str | None, typer.Option(help="Partner id.")] = None) -> None:
    """Create an organization."""
    from parley.store import admin

    async def go(db: Database) -> str:
        if await admin.find_organization(db, name) is not None:
            raise _fail(f"organization {name!r} already exists")
        return await admin.create_organization(db, name, partner_id=partner)

    typer.echo(_run(go))


@orgs.command("list")
def orgs_list() -> None:
    """List organizations."""
    from parley.store import admin

    for org in _run(admin.list_organizations):
        typer.echo(f"{org['id']}  {org['name']}" + (f"  partner={org['partner_id']}" if org["partner_id"] else ""))


@users.command("create")
def users_create(
    email: str,
    org: Annotated[str, typer.Option(help="Organization name.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Create a user in an organization."""
    from parley.store import admin

    async def go(db: Database) -> str:
        organization = await admin.find_organization(db, org)
        if organization is None:
            raise _fail(f"no organization named {org!r} (see `parley orgs list`)")
        if await admin.find_user(db, email) is not None:
            raise _fail(f"user {email!r} already exists")
        return await admin.create_user(db, org_id=organization["id"], email=email, name=name or email)

    typer.echo(_run(go))


@users.command("list")
def users_list() -> None:
    """List users."""
    from parley.store import admin

    for user in _run(admin.list_users):
        typer.echo(f"{user['id']}  {user['email']}  org={user['org_id']}")


@tokens.command("create")
def tokens_create(
    user: Annotated[str, typer.Option(help="The user's email.")],
    name: Annotated[str, typer.Option(help="A label for the token.")] = "api",
    scope: Annotated[str, typer.Option(help="organization, partner or system.")] = "organization",
    read_only: Annotated[bool, typer.Option("--read-only", help="Read permission only.")] = False,
    partner: Annotated[str | None, typer.Option(help="Partner id (partner scope).")] = None,
    is_admin: Annotated[
        bool,
        typer.Option("--admin", help="Reads every session of its organizations, unflags them, reads the audit trail."),
    ] = False,
) -> None:
    """Issue a token for a user; it is printed once and stored hashed."""
    from parley.store import admin

    if scope not in ("organization", "partner", "system"):
        raise _fail("--scope must be organization, partner or system", 2)

    async def go(db: Database) -> admin.IssuedToken:
        found = await admin.find_user(db, user)
        if found is None:
            raise _fail(f"no user {user!r} (see `parley users list`)")
        return await admin.create_token(
            db,
            user_id=found["id"],
            org_id=found["org_id"],
            scope=cast(Scope, scope),
            can_write=not read_only,
            name=name,
            partner_id=partner,
            is_admin=is_admin,
        )

    try:
        issued = _run(go)
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    typer.echo(f"token id: {issued.id}", err=True)
    typer.echo(issued.token)


@tokens.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens (email).")] = None,
) -> None:
    """List tokens (never their secrets)."""
    from parley.store import admin

    async def go(db: Database) -> list[str]:
        user_id = None
        if user is not None:
            found = await admin.find_user(db, user)
            if found is None:
                raise _fail(f"no user {user!r}")
            user_id = found["id"]
        rows = await admin.list_tokens(db, user_id=user_id)
        return [
            f"{t['id']}  {t['prefix']}…  {t['name']}  scope={t['scope']}  {'rw' if t['can_write'] else 'ro'}"
            + ("  admin" if t["is_admin"] else "")
            + ("  REVOKED" if t["revoked_at"] else "")
            for t in rows
        ]

    for line in _run(go):
        typer.echo(line)


@tokens.command("revoke")
def tokens_revoke(token_id: str) -> None:
    """Revoke a token by id.

    A server that has not accepted it lately refuses it from now on. A running
    server that accepted it in the last PARLEY_AUTH_CACHE_SECONDS (default 5 s) may accept it until
    that time has passed, each server process on its own; set PARLEY_AUTH_CACHE_SECONDS=0 on the
    servers for revocation that takes effect immediately.
    """
    from parley.store import admin

    if not _run(admin.revoke_token, token_id):
        raise _fail(f"no active token with id {token_id}")
    typer.echo("revoked")


def _limit(value: str | None, kind: type[int] | type[Decimal]) -> object:
    """CLI limit values: 'none' (unlimited) or a number (0 means nothing allowed)."""
    if value is None:
        return _UNSET
    if value.strip().lower() in ("none", "null", "unlimited"):
        return None
    try:
        number = kind(value)
    except (ValueError, ArithmeticError) as exc:
        raise _fail(f"{value!r} is not a number (or 'none' for unlimited)", 2) from exc
    if number < 0:
        raise _fail(f"{value!r}: limits cannot be negative", 2)
    return number


_UNSET = object()


async def _budget_service(db: Database, org_name: str) -> tuple[BudgetService, Caller]:
    from parley.chat.budgets import BudgetService
    from parley.chat.catalog import Caller, NewSessionDefaults, SessionCatalog
    from parley.store import admin
    from parley.store.tenancy import Tenant

    org = await admin.find_organization(db, org_name)
    if org is None:
        raise _fail(f"no organization named {org_name!r} (see `parley orgs list`)")
    catalog = SessionCatalog(db, NewSessionDefaults(model="", system_prompt="", max_turns=50))
    return BudgetService(db, catalog), Caller(tenant=Tenant.system(), user_id="cli", home_org_id=org["id"])


def _print_budget(view: BudgetView) -> None:
    data = view.as_json()
    if data is None:
        typer.echo("no budget: unlimited")
        return
    for key, value in data.items():
        shown = ("the server's list" if key == "allowedModels" else "unlimited") if value is None else value
        typer.echo(f"{key:26} {shown}")


@budget.command("show")
def budget_show(org: Annotated[str, typer.Option(help="Organization name.")]) -> None:
    """Show the budget, today's and this month's spend, and what remains."""

    async def go(db: Database) -> BudgetView:
        service, caller = await _budget_service(db, org)
        return await service.view(caller, None)

    _print_budget(_run(go))


class ApprovalModeOption(StrEnum):
    per_step = "per_step"
    auto_approve = "auto_approve"
    action_plan = "action_plan"


@budget.command("set")
def budget_set(
    org: Annotated[str, typer.Option(help="Organization name.")],
    daily_cents: Annotated[str | None, typer.Option(help="Daily budget in cents, or 'none'.")] = None,
    monthly_cents: Annotated[str | None, typer.Option(help="Monthly budget in cents, or 'none'.")] = None,
    max_turns: Annotated[str | None, typer.Option(help="Max turns per new session, or 'none'.")] = None,
    per_minute: Annotated[str | None, typer.Option(help="Messages per minute per user, or 'none'.")] = None,
    per_hour: Annotated[str | None, typer.Option(help="Messages per hour per organization, or 'none'.")] = None,
    models: Annotated[str | None, typer.Option(help="Allowed models, comma-separated, or 'none'.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled", help="Turn AI on or off.")] = None,
    approval_mode: Annotated[
        ApprovalModeOption | None, typer.Option(help="Who decides tool calls that need approval.")
    ] = None,
) -> None:
    """Set budget fields (others unchanged): 'none' is unlimited, 0 allows nothing."""
    values: dict[str, object] = {}
    for name, raw, kind in (
        ("daily_budget_cents", daily_cents, Decimal),
        ("monthly_budget_cents", monthly_cents, Decimal),
        ("max_turns_per_session", max_turns, int),
        ("messages_per_minute_per_user", per_minute, int),
        ("messages_per_hour_per_org", per_hour, int),
    ):
        parsed = _limit(raw, kind)
        if parsed is not _UNSET:
            values[name] = parsed
    if values.get("max_turns_per_session") == 0:
        raise _fail("--max-turns must be at least 1 (or 'none')", 2)
    if models is not None:
        names = [m.strip() for m in models.split(",") if m.strip()]
        values["allowed_models"] = None if models.strip().lower() == "none" else names
    if enabled is not None:
        values["enabled"] = enabled
    if approval_mode is not None:
        values["approval_mode"] = approval_mode.value
    if not values:
        raise _fail("nothing to set: give at least one option (see --help)", 2)

    async def go(db: Database) -> BudgetView:
        service, caller = await _budget_service(db, org)
        return await service.update(caller, None, values)

    _print_budget(_run(go))


def _tool_catalog() -> ToolCatalog:
    from parley.config import load_tool_settings
    from parley.tools import ToolCatalog

    try:
        settings = load_tool_settings()
        catalog = ToolCatalog.from_config_file(
            settings.mcp_config, production=settings.production, allowed_hosts=settings.llm_allowed_hosts
        )
    except ConfigError as exc:
        _config_problems(exc)
        raise typer.Exit(2) from exc
    if not catalog.configured:
        raise _fail("no tool servers are configured: set PARLEY_MCP_CONFIG (see docs/tools.md)")
    # What the servers' supervisors warn about (a server down, a tool blocked) is in the output.
    logging.getLogger("parley.tools").setLevel(logging.ERROR)
    return catalog


_WAIT = typer.Option(help="How long to wait for the servers to start, in seconds.", min=0)


@tools.command("list")
def tools_list(wait: Annotated[float, _WAIT] = 30.0) -> None:
    """Start the configured servers and list their tools: approval rule, annotations, status."""
    catalog = _tool_catalog()

    async def go(db: Database) -> CatalogDescription:
        await catalog.start(db, wait=wait, record=False)
        try:
            return catalog.describe()
        finally:
            await catalog.aclose()

    described = _run(go)
    for server in described.servers:
        state = f"down: {server.error}" if server.state != "running" and server.error else server.state
        typer.echo(f"server {server.key} ({server.transport}: {server.target}): {state}, {server.tools} tools")
    if not described.tools:
        return
    typer.echo("")
    rows = [["NAME", "SERVER", "APPROVAL", "READ-ONLY", "DESTRUCTIVE", "STATUS"]]
    for entry in described.tools:
        tool = entry.tool
        status = entry.status if entry.reason is None else f"{entry.status}: {entry.reason}"
        rows.append([tool.name, tool.server, tool.approval, _yes(tool.read_only), _yes(tool.destructive), status])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]))


def _yes(value: bool) -> str:
    return "yes" if value else "no"


@tools.command("approve")
def tools_approve(
    names: Annotated[list[str] | None, typer.Argument(help="Tools by name, as `parley tools list` shows them.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Approve every tool the servers offer now.")] = False,
    wait: Annotated[float, _WAIT] = 30.0,
) -> None:
    """Pin tools' current definitions, as their servers give them now: a blocked tool runs again."""
    if bool(names) == every:
        raise _fail("give the names of tools to approve, or --all (see `parley tools list`)", 2)
    catalog = _tool_catalog()

    async def go(db: Database) -> list[str]:
        from parley.tools import ToolNotFound

        await catalog.start(db, wait=wait, record=False)
        try:
            return await catalog.approve(db, None if every else names)
        except ToolNotFound as exc:
            raise _fail(str(exc)) from exc
        finally:
            await catalog.aclose()

    for name in _run(go):
        typer.echo(f"approved {name}")


@app.command()
def chat(
    url: Annotated[str, typer.Option(envvar="PARLEY_URL", help="parley server URL.")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="PARLEY_TOKEN", help="API token.")] = None,
    session: Annotated[str | None, typer.Option(help="Resume this session id.")] = None,
) -> None:
    """Chat in the terminal with a parley server (a client of its HTTP API)."""
    from parley.client.chat import run_chat

    if not token:
        raise _fail("a token is required: --token or PARLEY_TOKEN (see `parley tokens create`)", 2)
    raise typer.Exit(run_chat(url=url, token=token, session_id=session))


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Address for parley.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PARLEY_PORT", help="Port for parley.")] = 8000,
    data_dir: Annotated[
        str | None, typer.Option(envvar="PARLEY_DATA_DIR", help="Where the database and demo state live.")
    ] = None,
) -> None:
    """Run parley with a small local model: offline, no keys, SQLite."""
    from parley.local.demo import run_demo

    raise typer.Exit(run_demo(host=host, port=port, data_dir=data_dir))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
