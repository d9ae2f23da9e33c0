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

from parley.store import repositories as repo
from parley.store.db import Database
from parley.store.ids import new_id
from parley.store.sql import Record
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


async def create_organization(db: Database, name: str, *, partner_id: str | None = None) -> str:
    """A new organization; returns its id."""
    org_id = new_id()
    async with db.unit(Tenant.system()) as tx:
        await repo.insert_organization(
            tx, {"id": org_id, "name": name, "partner_id": partner_id, "created_at": datetime.now(UTC)}
        )
    return org_id


async def find_organization(db: Database, name: str) -> Record | None:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        return await repo.find_organization(tx, name=name)


async def list_organizations(db: Database) -> Sequence[Record]:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        return await repo.list_organizations(tx)


async def create_user(db: Database, *, org_id: str | None, email: str, name: str) -> str:
    """A new user; returns its id."""
    user_id = new_id()
    async with db.unit(Tenant.system()) as tx:
        await repo.insert_user(
            tx, {"id": user_id, "org_id": org_id, "email": email, "name": name, "created_at": datetime.now(UTC)}
        )
    return user_id


async def find_user(db: Database, email: str) -> Record | None:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        return await repo.find_user(tx, email)


async def list_users(db: Database, *, org_id: str | None = None) -> Sequence[Record]:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        return await repo.list_users(tx, org_id=org_id)


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
    is_admin: bool = False,
) -> IssuedToken:
    """A new token. `is_admin`: it reads every session of its organizations, unflags them and
    reads the audit trail (its scope still bounds which organizations those are)."""
    if scope == "organization" and org_id is None:
        raise ValueError("an organization-scoped token needs an organization")
    if scope == "partner" and partner_id is None:
        raise ValueError("a partner-scoped token needs a partner id")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = new_id()
    async with db.unit(Tenant.system()) as tx:
        await repo.insert_token(
            tx,
            {
                "id": token_id,
                "user_id": user_id,
                "org_id": org_id,
                "partner_id": partner_id,
                "name": name,
                "token_hash": hash_token(raw),
                "prefix": raw[: len(TOKEN_PREFIX) + 6],
                "scope": scope,
                "can_write": can_write,
                "is_admin": is_admin,
                "created_at": datetime.now(UTC),
                "expires_at": expires_at,
            },
        )
    return IssuedToken(id=token_id, token=raw)


async def token_is_active(db: Database, raw: str) -> bool:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        row = await repo.token_by_hash(tx, hash_token(raw))
    return row is not None and row["revoked_at"] is None


async def list_tokens(db: Database, *, user_id: str | None = None) -> Sequence[Record]:
    async with db.unit(Tenant.system(), readonly=True) as tx:
        return await repo.list_tokens(tx, user_id=user_id)


async def revoke_token(db: Database, token_id: str) -> bool:
    async with db.unit(Tenant.system()) as tx:
        return await repo.revoke_token(tx, token_id, now=datetime.now(UTC))
