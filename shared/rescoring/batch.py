"""One batch of a run: score its unscored turns, write their results, yield when told to.

A batch task loads its unscored result rows and the turns' contexts in one transaction,
then decides each turn with the model-call budget's permission, writing results every few
turns. It stops early when the run is cancelled, and gives its worker back (re-enqueuing
itself for the rest) when its time slice is over, whether it spent the slice working or
waiting for the budget: live traffic comes first, and no batch holds a worker for long.
A result is written only where none is yet, so a batch delivered twice, or resumed while
a copy still runs, never scores a turn twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.providers.base import ConversationContext
from shared.rescoring.budget import tenant_budget
from shared.rescoring.context import contexts_before
from shared.rescoring.fanout import publish_batches
from shared.rescoring.models import RescoreResult, RescoreRun
from shared.rescoring.runs import RunStatus, complete_if_done
from shared.rescoring.scoring import TurnRescore, rescore_turn, stages_to_run
from shared.schemas import Stage, TenantSettings

log = logging.getLogger(__name__)

FLUSH_EVERY_TURNS = 10
FLUSH_EVERY_S = 1.0


class BatchEnd(StrEnum):
    DONE = "done"  # every turn of the batch has a result
    YIELDED = "yielded"  # its time slice ran out (or the budget said wait): re-enqueued
    CANCELLED = "cancelled"  # the run was cancelled (before or while it ran)
    NOT_RUNNING = "not_running"  # the run is completed, or gone


@dataclass(frozen=True)
class BatchOutcome:
    run_id: str
    batch: int
    end: BatchEnd
    scored: int  # results this task wrote
    already: int = 0  # results another copy of this batch wrote first

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "batch": self.batch,
            "end": self.end.value,
            "scored": self.scored,
            "already": self.already,
        }


@dataclass(frozen=True)
class PendingTurn:
    result_id: int
    old_agent: str | None
    turn: Turn
    context: ConversationContext


@dataclass(frozen=True)
class RunSpec:
    tenant_id: str
    settings: TenantSettings
    stages: tuple[Stage, ...]


def _load_batch(
    session: Session, run_id: uuid.UUID, batch: int
) -> tuple[RunSpec | None, BatchEnd | None, list[PendingTurn]]:
    run = session.get(RescoreRun, run_id)
    if run is None or run.status == RunStatus.COMPLETED.value:
        return None, BatchEnd.NOT_RUNNING, []
    if run.status == RunStatus.CANCELLED.value:
        return None, BatchEnd.CANCELLED, []
    spec = RunSpec(
        tenant_id=run.tenant_id,
        settings=TenantSettings.model_validate(run.settings),
        stages=tuple(Stage(s) for s in run.stages),
    )
    rows = session.execute(
        select(RescoreResult.id, RescoreResult.old_agent, Turn)
        .join(Turn, Turn.id == RescoreResult.turn_id)
        .where(
            RescoreResult.run_id == run_id,
            RescoreResult.batch == batch,
            RescoreResult.scored_at.is_(None),
        )
        .order_by(RescoreResult.position)
    ).all()
    contexts = contexts_before(session, [row.Turn for row in rows])
    pending = [PendingTurn(row.id, row.old_agent, row.Turn, contexts[row.Turn.id]) for row in rows]
    return spec, None, pending


def write_results(session: Session, scored: list[tuple[PendingTurn, TurnRescore]]) -> int:
    """Write each result once; returns how many were written here (not by another copy)."""
    if not scored:
        return 0
    now = datetime.now(UTC)
    rows = [
        {"scored_at": now, **rescore.result_values(pending.old_agent)}
        for pending, rescore in scored
    ]
    # Bound names must differ from the column names in an executemany UPDATE.
    params = [
        {"p_id": pending.result_id, **{f"p_{key}": value for key, value in row.items()}}
        for (pending, _), row in zip(scored, rows, strict=True)
    ]
    table = cast(Table, RescoreResult.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("p_id"), table.c.scored_at.is_(None))
        .values({key: bindparam(f"p_{key}") for key in rows[0]})
    )
    return int(session.connection().execute(stmt, params).rowcount or 0)


def _run_is_running(session: Session, run_id: uuid.UUID) -> bool:
    status = session.scalar(select(RescoreRun.status).where(RescoreRun.id == run_id))
    return status == RunStatus.RUNNING.value


def _flush(run_id: uuid.UUID, scored: list[tuple[PendingTurn, TurnRescore]]) -> tuple[int, bool]:
    """Write what is scored; returns (written, the run still runs)."""
    with session_scope() as session:
        written = write_results(session, scored)
        running = _run_is_running(session, run_id)
    return written, running


def time_slice_s() -> float:
    """How long a batch task may hold its worker: well inside the broker's visibility
    timeout, so Redis never hands a running batch to a second worker."""
    settings = get_settings()
    return min(settings.rescoring.batch_slice_s, 0.5 * settings.celery.visibility_timeout_s)


def score_batch(run_id: str, batch: int) -> BatchOutcome:
    rid = uuid.UUID(run_id)
    with session_scope() as session:
        spec, early_end, pending = _load_batch(session, rid, batch)
    if spec is None:
        return BatchOutcome(run_id, batch, early_end or BatchEnd.NOT_RUNNING, 0)
    budget = tenant_budget(spec.tenant_id)
    until = time.monotonic() + time_slice_s()
    end, written, already, buffer = BatchEnd.DONE, 0, 0, []
    last_flush = time.monotonic()
    for item in pending:
        calls = len(stages_to_run(item.turn, spec.stages))
        if time.monotonic() >= until or not budget.acquire(calls, until=until):
            end = BatchEnd.YIELDED
            break
        rescore = rescore_turn(
            turn=item.turn, context=item.context, settings=spec.settings, stages=spec.stages
        )
        buffer.append((item, rescore))
        if len(buffer) >= FLUSH_EVERY_TURNS or time.monotonic() - last_flush >= FLUSH_EVERY_S:
            count, running = _flush(rid, buffer)
            written, already = written + count, already + len(buffer) - count
            buffer, last_flush = [], time.monotonic()
            if not running:
                end = BatchEnd.CANCELLED
                break
    count, _ = _flush(rid, buffer)
    written, already = written + count, already + len(buffer) - count
    return _finish(run_id, batch, end=end, written=written, already=already, spec=spec)


def _finish(
    run_id: str, batch: int, *, end: BatchEnd, written: int, already: int, spec: RunSpec
) -> BatchOutcome:
    if end is BatchEnd.YIELDED:
        publish_batches(run_id, [batch])
    elif end is BatchEnd.DONE:
        with session_scope() as session:
            complete_if_done(session, run_id)
    log.info(
        f"rescoring run {run_id} batch {batch}: {end.value}, {written} scored"
        + (f", {already} already scored elsewhere" if already else ""),
        extra={"action": f"rescore_batch_{end.value}", "tenant_id": spec.tenant_id},
    )
    return BatchOutcome(run_id, batch, end, written, already)
