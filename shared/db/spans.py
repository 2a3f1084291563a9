"""Per-turn stage spans: where and when each stage ran, and what it wrote."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from shared.db.models import TurnSpan

SPANS = cast(Table, TurnSpan.__table__)


@dataclass
class SpanRecord:
    turn_id: str
    stage: str
    started_at: float
    finished_at: float = 0.0
    queue: str | None = None
    worker: str | None = None
    pid: int | None = None
    enqueued_at: float | None = None
    simulated_ms: float | None = None
    outcome: str = "ok"
    fields_written: list[str] = field(default_factory=list)
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


def record_span(session: Session, span: SpanRecord) -> None:
    """Insert the span; its attempt number is counted in the same statement."""
    turn_id = uuid.UUID(span.turn_id)
    spans = SPANS.c
    attempt = (
        select(func.count() + 1)
        .select_from(SPANS)
        .where(spans.turn_id == turn_id, spans.stage == span.stage)
        .scalar_subquery()
    )
    # A Core insert on the table: the ORM's bulk-insert machinery costs more CPU than the
    # statement itself on this hot path.
    session.connection().execute(
        insert(SPANS).values(
            turn_id=turn_id,
            stage=span.stage,
            attempt=attempt,
            queue=span.queue,
            worker=span.worker,
            pid=span.pid,
            enqueued_at=span.enqueued_at,
            started_at=span.started_at,
            finished_at=span.finished_at,
            simulated_ms=span.simulated_ms,
            outcome=span.outcome,
            fields_written=span.fields_written,
            calls=span.calls,
            tokens_in=span.tokens_in,
            tokens_out=span.tokens_out,
        )
    )


def spans_of(session: Session, turn_id: str) -> list[TurnSpan]:
    return list(
        session.scalars(
            select(TurnSpan)
            .where(TurnSpan.turn_id == uuid.UUID(turn_id))
            .order_by(TurnSpan.started_at)
        )
    )
