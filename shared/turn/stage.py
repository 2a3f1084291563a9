"""What every stage shares: where it runs, its span, its turn's context and budget."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

from psycopg.rows import namedtuple_row

from shared.config import get_settings
from shared.db.direct import direct_connection
from shared.db.spans import SpanRecord
from shared.db.tenants import tenant_settings_from
from shared.db.turns import TurnRecord, stage_message, write_stage_output
from shared.errors import TurnNotFound
from shared.providers.base import ConversationContext, Usage
from shared.providers.failures import ProviderBudgetExceeded
from shared.schemas import ConversationMemory, Qualification, Stage, TenantSettings

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
    *,
    stage: Stage,
    turn_id: str,
    values: dict[str, Any],
    span: SpanRecord,
    usage: Usage | None = None,
    outcome: str = "ok",
) -> bool:
    """Write the stage's own fields (and its model usage, if it called one) and its span,
    once, in one statement.

    False when another delivery of the stage wrote its output first: that one stands.
    """
    finished = finish_span(span, usage=usage or Usage(), fields=sorted(values), outcome=outcome)
    with direct_connection() as conn:
        return write_stage_output(
            conn,
            stage=stage,
            turn_id=turn_id,
            values=values,
            span=finished,
            usage=usage.as_dict() if usage else None,
        )


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


# What a header stage of a turn cancelled before it ran says instead of calling a model.
CANCELLED_NOTE = "the turn was cancelled by a later message before this stage ran"


def turn_deadline(turn: TurnRecord) -> float:
    """Epoch seconds by which the turn must have ended: accepted (or, for a turn held over
    its tenant's admission limit, let go) + budget."""
    return max(turn.accepted_at, turn.released_at or 0.0) + get_settings().turn.budget_s


def ensure_budget_left(deadline: float, stage: Stage) -> None:
    """A stage that starts past its turn's deadline calls no model, whichever provider
    serves it: it raises, and the stage answers with its fallback at once (a turn recovered
    late ends with the fallback reply, not a late answer)."""
    late_s = time.time() - deadline
    if late_s >= 0:
        budget_s = get_settings().turn.budget_s
        raise ProviderBudgetExceeded(
            f"the turn's budget (CHORDLINE_TURN_BUDGET_S, {budget_s:g} s) ran out "
            f"{late_s:.1f} s before the {stage.value} stage started; no model was called"
        )


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


# Every stage reads this first: plain SQL on a direct connection, prepared once per
# connection, rows as named tuples. The tenant's settings come as text, so that parsing
# them is remembered per distinct document rather than done for every stage.
_STAGE_INPUTS = f"""
    SELECT t.*,
           c.qualification_status AS conversation_qualification,
           c.contextual_memory AS conversation_memory,
           tn.settings::text AS tenant_settings,
           (SELECT coalesce(json_agg(json_build_object('message', h.message,
                                                       'reply', h.agent_response)
                                     ORDER BY h.seq), '[]'::json)
              FROM (SELECT seq, message, agent_response FROM turns
                     WHERE conversation_id = t.conversation_id AND seq < t.seq
                       AND status <> 'cancelled'
                     ORDER BY seq DESC LIMIT {HISTORY_TURNS}) h) AS conversation_history
      FROM turns t
      JOIN conversations c ON c.id = t.conversation_id
      JOIN tenants tn ON tn.id = t.tenant_id
     WHERE t.id = %(turn_id)s
"""


# The researcher needs the message and the tenant, not the conversation.
_TURN_AND_TENANT = """
    SELECT t.*, tn.settings::text AS tenant_settings
      FROM turns t JOIN tenants tn ON tn.id = t.tenant_id
     WHERE t.id = %(turn_id)s
"""


def load_stage_inputs(turn_id: str, *, conversation: bool = True) -> StageInputs:
    """The turn, its tenant's settings and its conversation context, in one round trip.

    Without ``conversation`` the context holds the message alone (no memory, no history):
    for a stage that reads neither."""
    with direct_connection() as conn:
        found = (
            conn.cursor(row_factory=namedtuple_row)
            .execute(
                _STAGE_INPUTS if conversation else _TURN_AND_TENANT,
                {"turn_id": uuid.UUID(turn_id)},
            )
            .fetchone()
        )
    if found is None:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    row: Any = found  # the turn's columns and the conversation's, by name
    context = ConversationContext(tenant_id=row.tenant_id, message=stage_message(row))
    if conversation:
        context = ConversationContext(
            tenant_id=row.tenant_id,
            message=stage_message(row),
            qualification_status=Qualification(row.conversation_qualification),
            memory=ConversationMemory.from_stored(row.conversation_memory),
            history=[
                {"message": h["message"], "reply": h["reply"] or ""}
                for h in row.conversation_history
            ],
        )
    settings = tenant_settings_from(row.tenant_settings)
    return StageInputs(turn=row, settings=settings, context=context)


_TURN = "SELECT * FROM turns WHERE id = %(turn_id)s"


def read_turn(turn_id: str) -> TurnRecord:
    """The turn's row as it is now (one round trip)."""
    with direct_connection() as conn:
        row = (
            conn.cursor(row_factory=namedtuple_row)
            .execute(_TURN, {"turn_id": uuid.UUID(turn_id)})
            .fetchone()
        )
    if row is None:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    return cast(TurnRecord, row)
