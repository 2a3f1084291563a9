"""What a run re-scores and with which settings, checked before anything is written.

Every check names the option it refused and the limit it broke: an unknown tenant, an
unknown or invalid ``--set``, an unknown stage, a date that does not parse, a range that is
the wrong way round, an unknown conversation, an empty or oversized selection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.models import Conversation, Turn
from shared.db.tenants import apply_overrides, parse_setting_pairs, require_tenant
from shared.errors import InvalidInput
from shared.schemas import TERMINAL_STATUSES, Stage, TenantSettings, TurnStatus
from shared.validation import check_slug

RESCORABLE_STAGES = (Stage.ORCHESTRATOR, Stage.RESEARCHER)
DATE_FORMS = "YYYY-MM-DD or an ISO 8601 time such as 2026-03-01T09:30 (UTC unless it says)"


@dataclass(frozen=True)
class RunRequest:
    """A run as asked for, options still as the user typed them."""

    tenant_id: str
    since: str | None = None
    until: str | None = None
    conversation: str | None = None
    stages: str | None = None  # "orchestrator,researcher"
    set_pairs: tuple[str, ...] = ()  # "thresholds.accurate=0.7"
    batch_size: int | None = None


@dataclass(frozen=True)
class RunPlan:
    """A request that passed every check: what will be selected and with which settings."""

    tenant_id: str
    since: datetime | None
    until: datetime | None
    conversation: str | None
    conversation_id: uuid.UUID | None
    stages: tuple[Stage, ...]
    overrides: dict[str, Any]
    settings: TenantSettings
    batch_size: int
    total_turns: int
    filters: list[ColumnElement[bool]] = field(repr=False, default_factory=list)

    @property
    def total_batches(self) -> int:
        return -(-self.total_turns // self.batch_size)


# --------------------------------------------------------------------------- parsing


def parse_moment(option: str, value: str, *, end_of_day: bool) -> datetime:
    """A date (a whole day: its start, or for --until its end) or an ISO time, in UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time.min, tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(option, f"{value[:40]!r} is not a date; use {DATE_FORMS}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_stages(value: str | None) -> tuple[Stage, ...]:
    if value is None:
        return RESCORABLE_STAGES
    names = [part.strip() for part in value.split(",") if part.strip()]
    allowed = [s.value for s in RESCORABLE_STAGES]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise InvalidInput(
            "--stages",
            f"{', '.join(unknown) or 'nothing'} is not a stage that can be re-scored; "
            f"choose one or more of {','.join(allowed)}",
        )
    return tuple(s for s in RESCORABLE_STAGES if s.value in names)


def check_batch_size(value: int | None) -> int:
    default = get_settings().rescoring.batch_size
    if value is None:
        return default
    if not 1 <= value <= 1000:
        raise InvalidInput("--batch-size", f"is {value}; it must be between 1 and 1000")
    return value


# --------------------------------------------------------------------------- selection


def _conversation_id(session: Session, tenant_id: str, external_id: str) -> uuid.UUID:
    check_slug("--conversation", external_id, max_chars=get_settings().turn.max_id_chars)
    found = session.scalar(
        select(Conversation.id).where(
            Conversation.tenant_id == tenant_id, Conversation.external_id == external_id
        )
    )
    if found is None:
        raise InvalidInput(
            "--conversation", f"tenant {tenant_id!r} has no conversation {external_id!r}"
        )
    return found


def selection_filters(
    *,
    tenant_id: str,
    since: datetime | None,
    until: datetime | None,
    conversation_id: uuid.UUID | None,
) -> list[ColumnElement[bool]]:
    """Finished turns of the tenant (completed or failed), in the range, in the conversation.
    A turn cancelled by a later message is left out: the later turn answered its message."""
    filters: list[ColumnElement[bool]] = [
        Turn.tenant_id == tenant_id,
        Turn.status.in_([s.value for s in TERMINAL_STATUSES if s is not TurnStatus.CANCELLED]),
    ]
    if since is not None:
        filters.append(Turn.created_at >= since)
    if until is not None:
        filters.append(Turn.created_at < until)
    if conversation_id is not None:
        filters.append(Turn.conversation_id == conversation_id)
    return filters


def _describe(request: RunRequest) -> str:
    parts = [f"tenant {request.tenant_id!r}"]
    for label, value in (
        ("--since", request.since),
        ("--until", request.until),
        ("--conversation", request.conversation),
    ):
        if value:
            parts.append(f"{label} {value}")
    return ", ".join(parts)


def plan_run(session: Session, request: RunRequest) -> RunPlan:
    """Check everything and count the selection; raises InvalidInput, writes nothing."""
    current = require_tenant(session, request.tenant_id)
    stages = parse_stages(request.stages)
    overrides = parse_setting_pairs(request.set_pairs, field="--set")
    settings = apply_overrides(current, overrides, field="--set")
    batch_size = check_batch_size(request.batch_size)
    since = parse_moment("--since", request.since, end_of_day=False) if request.since else None
    until = parse_moment("--until", request.until, end_of_day=True) if request.until else None
    if since is not None and until is not None and since >= until:
        raise InvalidInput(
            "--until",
            f"{request.until} is not after --since {request.since}: the date range is the "
            "wrong way round",
        )
    conversation_id = (
        _conversation_id(session, request.tenant_id, request.conversation)
        if request.conversation is not None
        else None
    )
    filters = selection_filters(
        tenant_id=request.tenant_id, since=since, until=until, conversation_id=conversation_id
    )
    total = session.scalar(select(func.count()).select_from(Turn).where(*filters)) or 0
    if total == 0:
        raise InvalidInput(
            "selection", f"no finished turns match ({_describe(request)}); nothing to re-score"
        )
    limit = get_settings().rescoring.max_turns_per_run
    if total > limit:
        raise InvalidInput(
            "selection",
            f"{total:,} turns match ({_describe(request)}); the limit is {limit:,} per run: "
            "narrow it with --since/--until",
        )
    return RunPlan(
        tenant_id=request.tenant_id,
        since=since,
        until=until,
        conversation=request.conversation,
        conversation_id=conversation_id,
        stages=stages,
        overrides=overrides,
        settings=settings,
        batch_size=batch_size,
        total_turns=total,
        filters=filters,
    )
