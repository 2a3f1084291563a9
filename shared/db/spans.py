"""Per-turn stage spans: where and when each stage ran, and what it wrote."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import select
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


# Every stage of every turn inserts one, in the same statement as its stage's write (see
# shared/db/turns.py): the span is inserted only if the write happened. The attempt number
# is counted in the same statement.
INSERT_SPAN_FROM = """
    INSERT INTO turn_spans (turn_id, stage, attempt, queue, worker, pid, enqueued_at,
                            started_at, finished_at, simulated_ms, outcome, fields_written,
                            calls, tokens_in, tokens_out)
    SELECT {source}.id, %(span_stage)s::varchar,
           (SELECT count(*) + 1 FROM turn_spans s
             WHERE s.turn_id = {source}.id AND s.stage = %(span_stage)s::varchar),
           %(span_queue)s::varchar, %(span_worker)s::varchar, %(span_pid)s::integer,
           %(span_enqueued_at)s::double precision, %(span_started_at)s::double precision,
           %(span_finished_at)s::double precision, %(span_simulated_ms)s::double precision,
           %(span_outcome)s::varchar, %(span_fields_written)s, %(span_calls)s::integer,
           %(span_tokens_in)s::integer, %(span_tokens_out)s::integer
    FROM {source}
"""


def span_params(span: SpanRecord) -> dict[str, Any]:
    """The parameters of ``INSERT_SPAN_FROM``."""
    return {
        "span_stage": span.stage,
        "span_queue": span.queue,
        "span_worker": span.worker,
        "span_pid": span.pid,
        "span_enqueued_at": span.enqueued_at,
        "span_started_at": span.started_at,
        "span_finished_at": span.finished_at,
        "span_simulated_ms": span.simulated_ms,
        "span_outcome": span.outcome,
        "span_fields_written": Jsonb(span.fields_written),
        "span_calls": span.calls,
        "span_tokens_in": span.tokens_in,
        "span_tokens_out": span.tokens_out,
    }


def spans_of(session: Session, turn_id: str) -> list[TurnSpan]:
    return list(
        session.scalars(
            select(TurnSpan)
            .where(TurnSpan.turn_id == uuid.UUID(turn_id))
            .order_by(TurnSpan.started_at)
        )
    )
