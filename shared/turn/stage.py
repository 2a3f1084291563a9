"""What every stage shares: where it runs, its span, its turn's context and budget."""

from __future__ import annotations

import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, aliased

from shared.config import get_settings
from shared.db.models import Conversation, Tenant, Turn
from shared.db.spans import SpanRecord
from shared.errors import TurnNotFound
from shared.providers.base import ConversationContext, Usage
from shared.schemas import Stage, TenantSettings

_TurnRow = aliased(Turn, name="this_turn")


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


@dataclass(frozen=True)
class StageInputs:
    """Everything a stage reads before it calls a model, fetched in one round trip."""

    turn: Turn
    settings: TenantSettings
    context: ConversationContext

    @property
    def deadline(self) -> float:
        return turn_deadline(self.turn)


HISTORY_TURNS = 6


@functools.cache
def _stage_inputs_statement() -> Select[Any]:
    """Built once per process: constructing it costs more CPU than running it."""
    earlier = (
        select(Turn.seq, Turn.message, Turn.agent_response)
        .where(Turn.conversation_id == Conversation.id, Turn.seq < _TurnRow.seq)
        .order_by(Turn.seq.desc())
        .limit(HISTORY_TURNS)
        .correlate(Conversation, _TurnRow)
        .subquery()
    )
    entry = func.json_build_object("message", earlier.c.message, "reply", earlier.c.agent_response)
    history = select(
        func.coalesce(func.json_agg(aggregate_order_by(entry, earlier.c.seq)), text("'[]'::json"))
    ).scalar_subquery()
    return (
        select(
            _TurnRow,
            Conversation.qualification_status,
            Conversation.contextual_memory,
            Tenant.settings,
            history,
        )
        # An explicit left side: tenants can join conversations too, and a worker process
        # was seen refusing the statement as ambiguous on every call after a restart.
        .select_from(_TurnRow)
        .join(Conversation, Conversation.id == _TurnRow.conversation_id)
        .join(Tenant, Tenant.id == _TurnRow.tenant_id)
        .where(_TurnRow.id == bindparam("turn_id"))
    )


def load_stage_inputs(session: Session, turn_id: str) -> StageInputs:
    """The turn, its tenant's settings and its conversation context, in one query."""
    row = session.execute(_stage_inputs_statement(), {"turn_id": uuid.UUID(turn_id)}).first()
    if row is None:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    turn, qualification, memory, settings, past = row
    context = ConversationContext(
        tenant_id=turn.tenant_id,
        message=turn.message,
        qualification_status=qualification,
        memory=dict(memory),
        history=[{"message": h["message"], "reply": h["reply"] or ""} for h in past or []],
    )
    return StageInputs(turn=turn, settings=TenantSettings.model_validate(settings), context=context)
