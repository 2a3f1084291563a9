"""Tenants and their per-tenant settings."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.direct import direct_connection
from shared.db.models import Tenant
from shared.errors import InvalidInput, UnknownTenant
from shared.schemas import TenantSettings
from shared.validation import check_slug


def parse_setting_pairs(pairs: Iterable[str], *, field: str = "--set") -> dict[str, Any]:
    """``key=value`` pairs as typed; a value is read as JSON when it parses, else as text."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(field, f"{pair!r} is not key=value (e.g. thresholds.accurate=0.7)")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def setting_keys(settings: TenantSettings) -> list[str]:
    """Every dotted key a setting can be changed by, e.g. ``thresholds.accurate``."""

    def walk(prefix: str, value: Any) -> list[str]:
        if isinstance(value, dict):
            return [k for name, v in value.items() for k in walk(f"{prefix}{name}.", v)]
        return [prefix.rstrip(".")]

    return walk("", settings.model_dump(mode="json"))


def _invalid_settings(exc: ValidationError) -> InvalidInput:
    """What pydantic refused, as InvalidInput naming the first setting (the others follow)."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        given = error.get("input")
        if not isinstance(given, dict | list):
            shown = repr(given)
            message += f"; got {shown if len(shown) <= 60 else shown[:57] + '...'}"
        problems.append((where, message[:1].lower() + message[1:]))
    (field, first), *others = problems
    also = "".join(f"; and {where}: {message}" for where, message in others)
    return InvalidInput(field, first + also)


def validate_settings(raw: dict[str, Any]) -> TenantSettings:
    """A tenant's settings from plain data, or InvalidInput naming the setting at fault."""
    try:
        return TenantSettings.model_validate(raw)
    except ValidationError as exc:
        raise _invalid_settings(exc) from None


def apply_overrides(
    current: TenantSettings, overrides: dict[str, Any], *, field: str | None = None
) -> TenantSettings:
    """``current`` with dotted-key overrides, validated; InvalidInput names what is wrong.

    With ``field`` (the option the overrides came in, such as ``--set``), every error is
    reported under it, the setting at fault first in its message."""
    try:
        return current.with_overrides(overrides)
    except KeyError as exc:
        raise InvalidInput(
            field or "settings",
            f"unknown setting {exc.args[0]!r}; known settings: {', '.join(setting_keys(current))}",
        ) from None
    except ValidationError as exc:
        invalid = _invalid_settings(exc)
        if field is None:
            raise invalid from None
        raise InvalidInput(field, f"{invalid.field}: {invalid.problem}") from None


def ensure_tenant(
    session: Session,
    *,
    tenant_id: str,
    name: str | None = None,
    settings: dict[str, Any] | None = None,
) -> TenantSettings:
    """Create the tenant if it does not exist; update its settings when given."""
    check_slug("tenant", tenant_id)
    validated = validate_settings(settings or {})
    stored = validated.model_dump(mode="json", exclude_defaults=True)
    stmt = insert(Tenant).values(id=tenant_id, name=name or tenant_id, settings=stored)
    if settings is not None:
        stmt = stmt.on_conflict_do_update(index_elements=[Tenant.id], set_={"settings": stored})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[Tenant.id])
    session.execute(stmt)
    recent_tenant_settings.forget(tenant_id)
    return tenant_settings(session, tenant_id)


def create_tenant(session: Session, *, tenant_id: str, name: str | None = None) -> bool:
    """Create the tenant with the default settings; False if it existed (then it is left as
    it was, name included)."""
    check_slug("tenant", tenant_id)
    created = session.execute(
        insert(Tenant)
        .values(id=tenant_id, name=name or tenant_id, settings={})
        .on_conflict_do_nothing(index_elements=[Tenant.id])
        .returning(Tenant.id)
    ).first()
    recent_tenant_settings.forget(tenant_id)
    return created is not None


_TENANT_SETTINGS = text("SELECT settings FROM tenants WHERE id = :id")


def tenant_settings(session: Session, tenant_id: str) -> TenantSettings:
    raw = session.execute(_TENANT_SETTINGS, {"id": tenant_id}).scalar()
    if raw is None:
        raise UnknownTenant(tenant_id)
    return TenantSettings.model_validate(raw)


@functools.lru_cache(maxsize=1024)
def tenant_settings_from(document: str) -> TenantSettings:
    """A tenant's settings from their stored JSON text; the same text is parsed once."""
    return TenantSettings.model_validate_json(document)


class RecentTenantSettings:
    """Each tenant's settings as this process read them within the last ``ttl_s`` seconds.

    ``enqueue_turn`` needs a tenant's topology and in-flight policy for every turn; reading
    them once a couple of seconds per tenant instead saves a round trip per turn. A change
    made in this process applies at once; one made elsewhere within that time. A tenant
    that does not exist is never remembered.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[TenantSettings, float]] = {}
        self._lock = threading.Lock()

    def get(self, tenant_id: str) -> TenantSettings:
        now = time.monotonic()
        known = self._known.get(tenant_id)
        if known is not None and known[1] > now:
            return known[0]
        with direct_connection() as conn:
            row = conn.execute(_TENANT_SETTINGS_TEXT, {"id": tenant_id}).fetchone()
        if row is None:
            raise UnknownTenant(tenant_id)
        settings = tenant_settings_from(row[0])
        with self._lock:
            self._known[tenant_id] = (settings, now + get_settings().turn.tenant_settings_ttl_s)
        return settings

    def forget(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._known.clear()
            else:
                self._known.pop(tenant_id, None)


_TENANT_SETTINGS_TEXT = "SELECT settings::text FROM tenants WHERE id = %(id)s"
recent_tenant_settings = RecentTenantSettings()


def require_tenant(session: Session, tenant_id: str) -> TenantSettings:
    check_slug("tenant", tenant_id)
    return tenant_settings(session, tenant_id)


PINNING = frozenset({"thresholds.accurate", "thresholds.partial"})


def update_tenant_settings(
    session: Session, tenant_id: str, overrides: dict[str, Any]
) -> TenantSettings:
    """Apply dotted-key overrides a person gave. Thresholds set by hand are pinned (the
    tenant's own calibration leaves them alone) unless ``thresholds.pinned`` is given too."""
    if PINNING & overrides.keys() and "thresholds.pinned" not in overrides:
        overrides = {**overrides, "thresholds.pinned": True}
    updated = apply_overrides(require_tenant(session, tenant_id), overrides)
    session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(settings=updated.model_dump(mode="json", exclude_defaults=True))
    )
    recent_tenant_settings.forget(tenant_id)
    return updated


@dataclass(frozen=True)
class TenantOverview:
    id: str
    name: str | None  # None when it was created without one
    documents: int
    turns: int


_TENANT_OVERVIEW = text(
    """
    SELECT t.id, t.name,
           (SELECT count(*) FROM kb_documents d WHERE d.tenant_id = t.id) AS documents,
           (SELECT count(*) FROM turns u WHERE u.tenant_id = t.id) AS turns
      FROM tenants t
     ORDER BY t.id
    """
)


def tenant_overview(session: Session) -> list[TenantOverview]:
    """Every tenant with how many documents its knowledge base holds and how many turns it
    has had."""
    return [
        TenantOverview(
            id=row.id,
            name=row.name if row.name != row.id else None,
            documents=row.documents,
            turns=row.turns,
        )
        for row in session.execute(_TENANT_OVERVIEW)
    ]
