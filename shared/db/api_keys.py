"""API keys of the HTTP API, per tenant.

A key reads ``chl_<prefix>_<secret>``: the prefix (8 hex characters) is public and names the
key in listings, the secret is 256 random bits. Only the SHA-256 of the whole key is stored,
so the key itself is shown once, when it is created, and a database dump holds no usable
key. A secret of that size needs no slow password hash: nobody can guess it, and a lookup
by its digest costs one index probe per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.db.tenants import require_tenant
from shared.errors import InvalidInput

KEY_SCHEME = "chl"
KEY_FORM = re.compile(r"^chl_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
PREFIX_FORM = re.compile(r"^[0-9a-f]{8}$")


@dataclass(frozen=True)
class NewKey:
    """A key just made: ``secret`` is the whole key, shown once and never stored."""

    prefix: str
    tenant_id: str
    secret: str


@dataclass(frozen=True)
class KeyListing:
    prefix: str
    tenant_id: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "tenant_id": self.tenant_id,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


@dataclass(frozen=True)
class Caller:
    """Who a request's key belongs to."""

    tenant_id: str
    key_prefix: str


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, tenant_id: str, label: str | None = None) -> NewKey:
    """A new key for the tenant (UnknownTenant if there is none)."""
    require_tenant(session, tenant_id)
    if label is not None and len(label) > 200:
        raise InvalidInput("--label", f"is {len(label)} characters; the limit is 200")
    while True:
        prefix = secrets.token_hex(4)
        if session.get(ApiKey, prefix) is None:
            break
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(prefix=prefix, tenant_id=tenant_id, key_hash=key_digest(key), label=label))
    session.flush()
    return NewKey(prefix=prefix, tenant_id=tenant_id, secret=key)


def list_keys(session: Session, *, tenant_id: str | None = None) -> list[KeyListing]:
    query = select(ApiKey).order_by(ApiKey.tenant_id, ApiKey.created_at)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return [
        KeyListing(k.prefix, k.tenant_id, k.label, k.created_at, k.revoked_at)
        for k in session.scalars(query)
    ]


def revoke_key(session: Session, prefix: str) -> bool:
    """Revoke the key with this prefix; False when it was revoked already."""
    if not PREFIX_FORM.match(prefix):
        raise InvalidInput("prefix", f"{prefix[:40]!r} is not a key prefix (8 hex characters)")
    if session.get(ApiKey, prefix) is None:
        raise InvalidInput("prefix", f"no API key has the prefix {prefix!r}")
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return bool(getattr(revoked, "rowcount", 0))


_CALLER = (
    "SELECT tenant_id, prefix FROM api_keys WHERE key_hash = %(digest)s AND revoked_at IS NULL"
)


def caller_of(conn: psycopg.Connection[Any], key: str) -> Caller | None:
    """The tenant a live key belongs to; None for a malformed, unknown or revoked key."""
    if not KEY_FORM.match(key):
        return None
    row = conn.execute(_CALLER, {"digest": key_digest(key)}).fetchone()
    return None if row is None else Caller(tenant_id=row[0], key_prefix=row[1])
