"""What every stage shares: where it runs, its span, its turn's context and budget."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.models import Conversation, Turn
from shared.db.spans import SpanRecord
from shared.providers.base import ConversationContext, Usage
from shared.schemas import Stage


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


def turn_deadline(turn: Turn) -> float:
    """Epoch seconds by which the turn must have ended: accepted + budget."""
    return turn.accepted_at + get_settings().turn.budget_s


def conversation_context(session: Session, turn: Turn) -> ConversationContext:
    conv = session.scalar(select(Conversation).where(Conversation.id == turn.conversation_id))
    assert conv is not None
    history = [
        {"message": m, "reply": r or ""}
        for m, r in session.execute(
            select(Turn.message, Turn.agent_response)
            .where(Turn.conversation_id == turn.conversation_id, Turn.seq < turn.seq)
            .order_by(Turn.seq.desc())
            .limit(6)
        ).all()
    ][::-1]
    return ConversationContext(
        tenant_id=turn.tenant_id,
        message=turn.message,
        qualification_status=conv.qualification_status,
        memory=dict(conv.contextual_memory),
        history=history,
    )
