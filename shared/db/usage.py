"""What a tenant's turns spent on model providers, summed per stage.

Each turn stores its usage in ``turns.usage``, one key per stage
(``{"orchestrator": {"calls": 1, "tokens_in": 812, "tokens_out": 41}, ...}``); this sums
them over a period, so a tenant's cost is the sum times the prices of its models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

COUNTERS = ("calls", "tokens_in", "tokens_out", "search_units", "retries")

_SUM_BY_STAGE = text(
    """
    SELECT stage.key AS stage,
           count(*) AS turns,
           sum(coalesce((stage.value->>'calls')::bigint, 0)) AS calls,
           sum(coalesce((stage.value->>'tokens_in')::bigint, 0)) AS tokens_in,
           sum(coalesce((stage.value->>'tokens_out')::bigint, 0)) AS tokens_out,
           sum(coalesce((stage.value->>'search_units')::bigint, 0)) AS search_units,
           sum(coalesce((stage.value->>'retries')::bigint, 0)) AS retries
    FROM turns
    CROSS JOIN LATERAL jsonb_each(turns.usage) AS stage
    WHERE turns.tenant_id = :tenant_id
      AND turns.created_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
      AND turns.created_at < coalesce(CAST(:until AS timestamptz), 'infinity')
      AND jsonb_typeof(stage.value) = 'object'
    GROUP BY stage.key
    ORDER BY stage.key
    """
)

_COUNT_TURNS = text(
    """
    SELECT count(*) FROM turns
    WHERE tenant_id = :tenant_id
      AND created_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
      AND created_at < coalesce(CAST(:until AS timestamptz), 'infinity')
    """
)


@dataclass(frozen=True)
class StageUsage:
    stage: str
    turns: int = 0
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    search_units: int = 0
    retries: int = 0


@dataclass(frozen=True)
class TenantUsage:
    tenant_id: str
    turns: int
    stages: dict[str, StageUsage] = field(default_factory=dict)

    @property
    def total(self) -> StageUsage:
        return StageUsage(
            "total",
            self.turns,
            *(sum(getattr(s, name) for s in self.stages.values()) for name in COUNTERS),
        )


def tenant_usage(
    session: Session,
    tenant_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TenantUsage:
    """Calls and tokens of the tenant's turns created in [since, until), per stage."""
    params = {"tenant_id": tenant_id, "since": since, "until": until}
    stages = {
        row.stage: StageUsage(
            row.stage, row.turns, *(int(getattr(row, name) or 0) for name in COUNTERS)
        )
        for row in session.execute(_SUM_BY_STAGE, params)
    }
    turns = int(session.execute(_COUNT_TURNS, params).scalar_one())
    return TenantUsage(tenant_id, turns, stages)
