"""Bearer tokens -> Principal.

A token is looked up by its SHA-256 digest; revoked or expired tokens and tokens of unknown users
are refused with 401. The principal carries scope, the organizations it may see, the user and
whether it may write; routes check `require_write` (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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

    @property
    def tenant(self) -> Tenant:
        return Tenant(scope=self.scope, org_ids=self.org_ids, user_id=self.user_id)

    @property
    def caller(self) -> Caller:
        return Caller(tenant=self.tenant, user_id=self.user_id, home_org_id=self.home_org_id)

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


async def authenticate(db: Database, authorization: str | None) -> Principal:
    raw = bearer_token(authorization)
    async with db.transaction(Tenant.system(), readonly=True) as s:
        found = await repo.find_token(s, hash_token(raw))
        if found is None:
            raise AuthenticationError("Invalid token.")
        token, user = found
        if token.revoked_at is not None:
            raise AuthenticationError("This token was revoked.")
        if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
            raise AuthenticationError("This token has expired.")
        if token.scope == "organization":
            org_ids = frozenset({token.org_id}) if token.org_id else frozenset()
        elif token.scope == "partner" and token.partner_id:
            org_ids = frozenset(await repo.org_ids_of_partner(s, token.partner_id))
        else:
            org_ids = frozenset()
    scope: Scope = token.scope  # type: ignore[assignment]
    return Principal(
        token_id=token.id,
        user_id=user.id,
        scope=scope,
        org_ids=org_ids,
        home_org_id=token.org_id,
        can_write=token.can_write,
    )
