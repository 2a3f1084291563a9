"""Per-turn stage spans: where and when each stage ran, and what it wrote."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.db.models import TurnSpan


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


# Every stage of every turn inserts one: plain SQL, prepared once; the attempt number is
# counted in the same statement.
_INSERT_SPAN = text("""
    INSERT INTO turn_spans (turn_id, stage, attempt, queue, worker, pid, enqueued_at,
                            started_at, finished_at, simulated_ms, outcome, fields_written,
                            calls, tokens_in, tokens_out)
    SELECT CAST(:turn_id AS uuid), CAST(:stage AS varchar), count(*) + 1,
           CAST(:queue AS varchar), CAST(:worker AS varchar), CAST(:pid AS integer),
           CAST(:enqueued_at AS double precision), CAST(:started_at AS double precision),
           CAST(:finished_at AS double precision), CAST(:simulated_ms AS double precision),
           CAST(:outcome AS varchar), CAST(:fields_written AS jsonb), CAST(:calls AS integer),
           CAST(:tokens_in AS integer), CAST(:tokens_out AS integer)
      FROM turn_spans WHERE turn_id = CAST(:turn_id AS uuid) AND stage = CAST(:stage AS varchar)
""")


def record_span(session: Session, span: SpanRecord) -> None:
    """Insert the span of a stage that has just finished."""
    session.execute(
        _INSERT_SPAN,
        {
            "turn_id": uuid.UUID(span.turn_id),
            "stage": span.stage,
            "queue": span.queue,
            "worker": span.worker,
            "pid": span.pid,
            "enqueued_at": span.enqueued_at,
            "started_at": span.started_at,
            "finished_at": span.finished_at,
            "simulated_ms": span.simulated_ms,
            "outcome": span.outcome,
            "fields_written": json.dumps(span.fields_written),
            "calls": span.calls,
            "tokens_in": span.tokens_in,
            "tokens_out": span.tokens_out,
        },
    )


def spans_of(session: Session, turn_id: str) -> list[TurnSpan]:
    return list(
        session.scalars(
            select(TurnSpan)
            .where(TurnSpan.turn_id == uuid.UUID(turn_id))
            .order_by(TurnSpan.started_at)
        )
    )
