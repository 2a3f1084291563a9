"""What every stage shares: where it runs, its span, its turn's context and budget."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from shared.config import get_settings
from shared.db.spans import SpanRecord
from shared.db.turns import TurnRecord
from shared.providers.base import Usage
from shared.providers.failures import ProviderBudgetExceeded
from shared.schemas import Stage
from shared.turn.store import StageInputs, turn_store

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
    return turn_store().write_output(
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


def load_stage_inputs(turn_id: str, *, conversation: bool = True) -> StageInputs:
    """The turn, its tenant's settings and its conversation context, in one round trip
    (``conversation=False``: the message alone, for a stage that reads no conversation)."""
    return turn_store().stage_inputs(turn_id, conversation=conversation)


def read_turn(turn_id: str) -> TurnRecord:
    """The turn's row as it is now (one round trip)."""
    return turn_store().turn(turn_id)
