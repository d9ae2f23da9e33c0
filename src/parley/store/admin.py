"""Administration of tenants, users and tokens (CLI and demo), run with system scope.

Tokens are random (`prl_` + 43 url-safe characters, 256 bits), shown once, and stored only as a
SHA-256 digest: a leaked database does not leak usable tokens, and a high-entropy secret needs no
slow hash.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update

from parley.store.db import Database
from parley.store.models import ApiToken, Organization, User
from parley.store.repositories import new_id
from parley.store.tenancy import Scope, Tenant

TOKEN_PREFIX = "prl_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    token: str  # the raw secret: shown once, never stored


async def open_database(url: str) -> Database:
    """A migrated database (the caller disposes it)."""
    db = Database(url)
    await db.migrate()
    return db


async def create_organization(db: Database, name: str, *, partner_id: str | None = None) -> Organization:
    org = Organization(id=new_id(), name=name, partner_id=partner_id, created_at=datetime.now(UTC))
    async with db.transaction(Tenant.system()) as s:
        s.add(org)
    return org


async def find_organization(db: Database, name: str) -> Organization | None:
    async with db.transaction(Tenant.system()) as s:
        return (await s.execute(select(Organization).where(Organization.name == name))).scalar_one_or_none()


async def list_organizations(db: Database) -> Sequence[Organization]:
    async with db.transaction(Tenant.system()) as s:
        return list((await s.execute(select(Organization).order_by(Organization.created_at))).scalars())


async def create_user(db: Database, *, org_id: str | None, email: str, name: str) -> User:
    user = User(id=new_id(), org_id=org_id, email=email, name=name, created_at=datetime.now(UTC))
    async with db.transaction(Tenant.system()) as s:
        s.add(user)
    return user


async def find_user(db: Database, email: str) -> User | None:
    async with db.transaction(Tenant.system()) as s:
        return (await s.execute(select(User).where(User.email == email))).scalar_one_or_none()


async def list_users(db: Database, *, org_id: str | None = None) -> Sequence[User]:
    async with db.transaction(Tenant.system()) as s:
        stmt = select(User).order_by(User.created_at)
        if org_id is not None:
            stmt = stmt.where(User.org_id == org_id)
        return list((await s.execute(stmt)).scalars())


async def create_token(
    db: Database,
    *,
    user_id: str,
    org_id: str | None,
    scope: Scope = "organization",
    can_write: bool = True,
    name: str = "api",
    partner_id: str | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    if scope == "organization" and org_id is None:
        raise ValueError("an organization-scoped token needs an organization")
    if scope == "partner" and partner_id is None:
        raise ValueError("a partner-scoped token needs a partner id")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        id=new_id(),
        user_id=user_id,
        org_id=org_id,
        partner_id=partner_id,
        name=name,
        token_hash=hash_token(raw),
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        scope=scope,
        can_write=can_write,
        created_at=datetime.now(UTC),
        expires_at=expires_at,
    )
    async with db.transaction(Tenant.system()) as s:
        s.add(row)
    return IssuedToken(id=row.id, token=raw)


async def token_is_active(db: Database, raw: str) -> bool:
    async with db.transaction(Tenant.system()) as s:
        row = (await s.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(raw)))).scalar_one_or_none()
    return row is not None and row.revoked_at is None


async def list_tokens(db: Database, *, user_id: str | None = None) -> Sequence[ApiToken]:
    async with db.transaction(Tenant.system()) as s:
        stmt = select(ApiToken).order_by(ApiToken.created_at)
        if user_id is not None:
            stmt = stmt.where(ApiToken.user_id == user_id)
        return list((await s.execute(stmt)).scalars())


async def revoke_token(db: Database, token_id: str) -> bool:
    async with db.transaction(Tenant.system()) as s:
        result = await s.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    return bool(getattr(result, "rowcount", 0))
