"""Tenants and their per-tenant settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import Tenant
from shared.errors import InvalidInput, UnknownTenant
from shared.schemas import TenantSettings
from shared.validation import check_slug


def ensure_tenant(
    session: Session,
    *,
    tenant_id: str,
    name: str | None = None,
    settings: dict[str, Any] | None = None,
) -> TenantSettings:
    """Create the tenant if it does not exist; update its settings when given."""
    check_slug("tenant", tenant_id)
    validated = TenantSettings.model_validate(settings or {})
    stored = validated.model_dump(mode="json", exclude_defaults=True)
    stmt = insert(Tenant).values(id=tenant_id, name=name or tenant_id, settings=stored)
    if settings is not None:
        stmt = stmt.on_conflict_do_update(index_elements=[Tenant.id], set_={"settings": stored})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[Tenant.id])
    session.execute(stmt)
    return tenant_settings(session, tenant_id)


_TENANT_SETTINGS = text("SELECT settings FROM tenants WHERE id = :id")  # on every enqueue


def tenant_settings(session: Session, tenant_id: str) -> TenantSettings:
    raw = session.execute(_TENANT_SETTINGS, {"id": tenant_id}).scalar()
    if raw is None:
        raise UnknownTenant(tenant_id)
    return TenantSettings.model_validate(raw)


def require_tenant(session: Session, tenant_id: str) -> TenantSettings:
    check_slug("tenant", tenant_id)
    return tenant_settings(session, tenant_id)


def update_tenant_settings(
    session: Session, tenant_id: str, overrides: dict[str, Any]
) -> TenantSettings:
    current = require_tenant(session, tenant_id)
    try:
        updated = current.with_overrides(overrides)
    except KeyError as exc:
        raise InvalidInput("settings", f"unknown setting {exc.args[0]!r}") from exc
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(settings=updated.model_dump(mode="json", exclude_defaults=True))
    )
    return updated


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))
