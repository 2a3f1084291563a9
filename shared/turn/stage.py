"""What every stage shares: where it runs, its span, its turn's context and budget."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.spans import SpanRecord, record_span
from shared.db.turns import TurnRecord, write_stage_fields
from shared.errors import TurnNotFound
from shared.providers.base import ConversationContext, Usage
from shared.schemas import Stage, TenantSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOrigin:
    """Where a stage runs, as the worker task knows it."""

    queue: str | None = None
    worker: str | None = None
    pid: int | None = None
    enqueued_at: float | None = None
    delivery: int = 1

    @classmethod
    def here(cls, *, queue: str | None = None, enqueued_at: float | None = None) -> StageOrigin:
        return cls(
            queue=queue, worker=socket.gethostname(), pid=os.getpid(), enqueued_at=enqueued_at
        )


def start_span(turn_id: str, stage: Stage, origin: StageOrigin) -> SpanRecord:
    return SpanRecord(
        turn_id=turn_id,
        stage=stage.value,
        started_at=time.time(),
        queue=origin.queue,
        worker=origin.worker,
        pid=origin.pid,
        enqueued_at=origin.enqueued_at,
    )


def finish_span(
    span: SpanRecord, *, usage: Usage, fields: list[str], outcome: str = "ok"
) -> SpanRecord:
    span.finished_at = time.time()
    span.fields_written = fields
    span.outcome = outcome
    span.calls, span.tokens_in, span.tokens_out = usage.calls, usage.tokens_in, usage.tokens_out
    span.simulated_ms = usage.simulated_ms or None
    return span


def commit_stage_output(
    session: Session,
    *,
    stage: Stage,
    turn_id: str,
    values: dict[str, Any],
    span: SpanRecord,
    usage: Usage | None = None,
    outcome: str = "ok",
) -> bool:
    """Write the stage's own fields (and its model usage, if it called one) and its span,
    in the caller's transaction, once.

    False when another delivery of the stage wrote its output first: that one stands.
    """
    counts = usage.as_dict() if usage else None
    if not write_stage_fields(session, stage=stage, turn_id=turn_id, values=values, usage=counts):
        return False
    finished = finish_span(span, usage=usage or Usage(), fields=sorted(values), outcome=outcome)
    record_span(session, finished)
    return True


def log_fallback(stage: Stage, *, turn: TurnRecord, exc: Exception) -> None:
    """A stage answered with its fallback instead of its provider's answer."""
    log.warning(
        f"{stage.value} fallback",
        extra={
            "action": "stage_fallback",
            "turn_id": str(turn.id),
            "tenant_id": turn.tenant_id,
            "stage": stage.value,
            "reason": str(exc),
        },
    )


def turn_deadline(turn: TurnRecord) -> float:
    """Epoch seconds by which the turn must have ended: accepted + budget."""
    return turn.accepted_at + get_settings().turn.budget_s


@dataclass(frozen=True)
class StageInputs:
    """Everything a stage reads before it calls a model, fetched in one round trip."""

    turn: TurnRecord
    settings: TenantSettings
    context: ConversationContext

    @property
    def deadline(self) -> float:
        return turn_deadline(self.turn)


HISTORY_TURNS = 6


# Every stage reads this first: plain SQL, prepared once, rows without ORM bookkeeping.
_STAGE_INPUTS = text(f"""
    SELECT t.*,
           c.qualification_status AS conversation_qualification,
           c.contextual_memory AS conversation_memory,
           tn.settings AS tenant_settings,
           (SELECT coalesce(json_agg(json_build_object('message', h.message,
                                                       'reply', h.agent_response)
                                     ORDER BY h.seq), '[]'::json)
              FROM (SELECT seq, message, agent_response FROM turns
                     WHERE conversation_id = t.conversation_id AND seq < t.seq
                     ORDER BY seq DESC LIMIT {HISTORY_TURNS}) h) AS conversation_history
      FROM turns t
      JOIN conversations c ON c.id = t.conversation_id
      JOIN tenants tn ON tn.id = t.tenant_id
     WHERE t.id = :turn_id
""")


def load_stage_inputs(session: Session, turn_id: str) -> StageInputs:
    """The turn, its tenant's settings and its conversation context, in one query."""
    row = session.execute(_STAGE_INPUTS, {"turn_id": uuid.UUID(turn_id)}).first()
    if row is None:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    context = ConversationContext(
        tenant_id=row.tenant_id,
        message=row.message,
        qualification_status=row.conversation_qualification,
        memory=dict(row.conversation_memory),
        history=[
            {"message": h["message"], "reply": h["reply"] or ""} for h in row.conversation_history
        ],
    )
    return StageInputs(
        turn=row, settings=TenantSettings.model_validate(row.tenant_settings), context=context
    )
