"""Bearer tokens -> Principal.

A token is looked up by its SHA-256 digest; revoked or expired tokens and tokens of unknown users
are refused with 401. The principal carries scope, the organizations it may see, the user and
whether it may write (and review: `is_admin`); routes check `require_write` (403). A revoked
token's use is recorded in the audit trail (`ai.security.revoked_token_used`).

Accepted tokens are cached in-process for `PARLEY_AUTH_CACHE_SECONDS` (5 s by default; the app
owns the cache; by digest, never the raw token), so a client streaming turns does not pay a
database transaction per request. The price:
revoking a token (or changing its user or partner's organizations) takes effect within the TTL in
a running server, not at once; a token's own expiry is honoured exactly. Refusals are not cached.
Requests that miss the cache together share one lookup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from parley.chat import audit
from parley.chat.catalog import Caller
from parley.errors import AuthenticationError, PermissionDeniedError
from parley.store import repositories as repo
from parley.store.admin import TOKEN_PREFIX, hash_token
from parley.store.db import Database
from parley.store.tenancy import Scope, Tenant


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    token_id: str
    user_id: str
    scope: Scope
    org_ids: frozenset[str]
    home_org_id: str | None
    can_write: bool
    is_admin: bool = False

    @property
    def tenant(self) -> Tenant:
        return Tenant(scope=self.scope, org_ids=self.org_ids, user_id=self.user_id)

    @property
    def caller(self) -> Caller:
        return Caller(tenant=self.tenant, user_id=self.user_id, home_org_id=self.home_org_id, is_admin=self.is_admin)

    def require_write(self) -> None:
        if not self.can_write:
            raise PermissionDeniedError("This token is read-only.")


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("Missing Authorization header: send 'Authorization: Bearer <token>'.")
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise AuthenticationError("Malformed Authorization header: expected 'Bearer <token>'.")
    if not value.startswith(TOKEN_PREFIX) or len(value) > 128:
        raise AuthenticationError("Invalid token.")
    return value


AUTH_CACHE_TTL = 5.0  # seconds a revoked token may still be accepted by a running server
AUTH_CACHE_MAX = 10_000  # entries; the oldest go first


class PrincipalCache:
    """Token digest -> principal, each entry valid until its deadline on the monotonic clock."""

    __slots__ = ("_clock", "_entries", "_lookups", "max_entries", "ttl")

    def __init__(
        self,
        ttl: float = AUTH_CACHE_TTL,
        max_entries: int = AUTH_CACHE_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lookups: dict[str, asyncio.Future[Principal | _Refused]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[digest]
            return None
        return entry[0]

    def put(self, digest: str, principal: Principal, token_expires_at: datetime | None) -> None:
        if self.ttl <= 0:
            return
        ttl = self.ttl
        if token_expires_at is not None:
            ttl = min(ttl, (token_expires_at - datetime.now(UTC)).total_seconds())
        if ttl <= 0:
            return
        entries = self._entries
        entries.pop(digest, None)
        while len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[digest] = (principal, self._clock() + ttl)

    def clear(self) -> None:
        self._entries.clear()

    async def shared(self, digest: str, look_up: Callable[[], Awaitable[Principal | _Refused]]) -> Principal | _Refused:
        """`look_up()` run once for the requests that miss the same digest together (a burst's first
        requests, or every stream's next one when the entry expires), instead of a transaction
        each. The lookup is its own task: a request that leaves does not cancel it for the others."""
        task = self._lookups.get(digest)
        if task is None:
            task = asyncio.ensure_future(look_up())
            self._lookups[digest] = task
            task.add_done_callback(lambda _: self._lookups.pop(digest, None))
        return await asyncio.shield(task)


@dataclass(frozen=True, slots=True)
class _Refused:
    """A lookup's refusal, raised by each request that shared the lookup (a revoked token's use is
    recorded for each)."""

    message: str
    revoked: dict[str, Any] | None = None  # the revoked token's row


async def authenticate(db: Database, authorization: str | None, *, cache: PrincipalCache | None = None) -> Principal:
    """The principal of a bearer token; `cache` (owned by the app) spares the lookup on repeats, and
    requests that miss it together share one lookup."""
    raw = bearer_token(authorization)
    digest = hash_token(raw)
    if cache is None:
        found = await _look_up(db, digest, None)
    elif (cached := cache.get(digest)) is not None:
        return cached
    else:
        found = await cache.shared(digest, lambda: _look_up(db, digest, cache))
    if isinstance(found, Principal):
        return found
    if found.revoked is not None:
        await audit.record_refusal(
            db,
            audit.TOKEN_REVOKED,
            org_id=found.revoked["org_id"],
            user_id=found.revoked["user_id"],
            now=datetime.now(UTC),
            detail={"tokenId": found.revoked["id"]},
        )
    raise AuthenticationError(found.message)


async def _look_up(db: Database, digest: str, cache: PrincipalCache | None) -> Principal | _Refused:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        token = await repo.find_token(tx, digest)
        if token is None:
            return _Refused("Invalid token.")
        org_ids: frozenset[str]
        if token["revoked_at"] is not None:
            return _Refused("This token was revoked.", revoked=token)
        if token["expires_at"] is not None and token["expires_at"] <= datetime.now(UTC):
            return _Refused("This token has expired.")
        if token["scope"] == "organization":
            org_ids = frozenset({token["org_id"]}) if token["org_id"] else frozenset()
        elif token["scope"] == "partner" and token["partner_id"]:
            org_ids = frozenset(await repo.org_ids_of_partner(tx, token["partner_id"]))
        else:
            org_ids = frozenset()
    scope: Scope = token["scope"]
    principal = Principal(
        token_id=token["id"],
        user_id=token["user_id"],
        scope=scope,
        org_ids=org_ids,
        home_org_id=token["org_id"],
        can_write=token["can_write"],
        is_admin=token["is_admin"],
    )
    if cache is not None:
        cache.put(digest, principal, token["expires_at"])
    return principal
