"""A re-scoring run's life: created with its selection, fanned out, resumed, cancelled, done.

Creating a run writes the run row and one result row per selected turn in one transaction
(the selection is fixed then: turns that finish later do not join it), and only after the
commit publishes the batches, as many as that snapshot holds. The snapshot, not the count
that planned the run, is what counts: under read committed it can hold turns that finished
after the count, so its size is checked against the per-run limit again. If the process
dies between the commit and the fan-out, or the broker loses messages, ``resume_run``
re-enqueues exactly the batches that still have unscored turns.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Float, exists, func, insert, literal, select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.counts import counted
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.rescoring.fanout import publish_batches
from shared.rescoring.models import RescoreResult, RescoreRun
from shared.rescoring.selection import RunPlan, RunRequest, plan_run
from shared.validation import check_turn_id

log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    tenant_id: str
    status: RunStatus
    total: int
    done: int
    created_at: datetime
    finished_at: datetime | None

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def turns_per_minute(self, now: datetime) -> float:
        """The run's average rate, from its creation to its end (or now)."""
        elapsed = ((self.finished_at or now) - self.created_at).total_seconds()
        return self.done / elapsed * 60 if elapsed > 0 else 0.0


@dataclass(frozen=True)
class CreatedRun:
    """A run as written: its id and the size of its snapshot of turns."""

    run_id: str
    total_turns: int
    total_batches: int


@dataclass(frozen=True)
class StartedRun:
    run_id: str
    plan: RunPlan  # its totals are the snapshot's, which may exceed the planning count
    batches_sent: int


# --------------------------------------------------------------------------- creating


def _snapshot_turns(session: Session, *, run_id: uuid.UUID, plan: RunPlan, limit: int) -> int:
    """One result row per selected turn, its historical decision copied in; returns the count.

    Turns are numbered by conversation and sequence, so that a batch holds whole stretches
    of conversations and the context of each turn is read once per batch. At most
    ``limit + 1`` rows are written: enough for the caller to see the limit broken.
    """
    order = func.row_number().over(order_by=(Turn.conversation_id, Turn.seq))
    selected = select(
        literal(run_id).label("run_id"),
        Turn.id,
        ((order - 1) // plan.batch_size).label("batch"),
        order.label("position"),
        Turn.phase,
        Turn.intent,
        Turn.proposed_agent,
        Turn.confidence,
        Turn.kb_information_level,
        Turn.research_results[0]["score"].astext.cast(Float),
        Turn.next_agent,
        Turn.routing_reason,
    ).where(*plan.filters)
    selected = selected.limit(limit + 1)
    columns = [
        "run_id",
        "turn_id",
        "batch",
        "position",
        "old_phase",
        "old_intent",
        "old_proposed_agent",
        "old_confidence",
        "old_level",
        "old_top_score",
        "old_agent",
        "old_routing_reason",
    ]
    session.execute(insert(RescoreResult).from_select(columns, selected))
    return int(
        session.scalar(
            select(func.count()).select_from(RescoreResult).where(RescoreResult.run_id == run_id)
        )
        or 0
    )


def create_run(session: Session, plan: RunPlan) -> CreatedRun:
    """Write the run and its result rows (not yet scored). Nothing is published here.

    The totals returned are the snapshot's: a statement after ``plan_run``'s count, it can
    hold turns that finished in between. Publish ``total_batches``, never the plan's.
    """
    run_id = uuid.uuid4()
    session.add(
        RescoreRun(
            id=run_id,
            tenant_id=plan.tenant_id,
            status=RunStatus.RUNNING.value,
            since=plan.since,
            until=plan.until,
            conversation=plan.conversation,
            stages=[s.value for s in plan.stages],
            overrides=plan.overrides,
            settings=plan.settings.model_dump(mode="json"),
            batch_size=plan.batch_size,
            total_turns=0,
            total_batches=0,
        )
    )
    session.flush()
    limit = get_settings().rescoring.max_turns_per_run
    total = _snapshot_turns(session, run_id=run_id, plan=plan, limit=limit)
    # Either refusal raises inside the caller's transaction: nothing is written.
    if total == 0:  # every matching turn vanished since the count
        raise InvalidInput("selection", "no finished turns match any more; nothing to re-score")
    if total > limit:  # turns finished since the count pushed it past the limit
        raise InvalidInput(
            "selection",
            f"more than {limit:,} turns match now (more finished since they were counted); "
            f"the limit is {limit:,} per run: narrow it with --since/--until",
        )
    total_batches = -(-total // plan.batch_size)
    session.execute(
        update(RescoreRun)
        .where(RescoreRun.id == run_id)
        .values(total_turns=total, total_batches=total_batches)
    )
    return CreatedRun(run_id=str(run_id), total_turns=total, total_batches=total_batches)


def start_run(request: RunRequest) -> StartedRun:
    """Check, create, commit, then fan out every batch of the snapshot on ``rescoring``."""
    with session_scope() as session:
        planned = plan_run(session, request)
        created = create_run(session, planned)
    plan = replace(planned, total_turns=created.total_turns)
    sent = publish_batches(created.run_id, range(created.total_batches))
    log.info(
        f"rescoring run {created.run_id} started: {counted(created.total_turns, 'turn')} in "
        f"{counted(sent, 'batch')}",
        extra={"action": "rescore_started", "tenant_id": plan.tenant_id},
    )
    return StartedRun(run_id=created.run_id, plan=plan, batches_sent=sent)


# --------------------------------------------------------------------------- reading


def load_run(session: Session, run_id: str) -> RescoreRun:
    checked = check_turn_id(run_id, field="run")
    run = session.get(RescoreRun, uuid.UUID(checked))
    if run is None:
        raise InvalidInput("run", f"there is no re-scoring run {run_id!r}")
    return run


def _unscored_count(session: Session, run_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(RescoreResult)
            .where(RescoreResult.run_id == run_id, RescoreResult.scored_at.is_(None))
        )
        or 0
    )


def run_progress(session: Session, run_id: str) -> RunProgress:
    run = load_run(session, run_id)
    return RunProgress(
        run_id=str(run.id),
        tenant_id=run.tenant_id,
        status=RunStatus(run.status),
        total=run.total_turns,
        done=run.total_turns - _unscored_count(session, run.id),
        created_at=run.created_at,
        finished_at=run.finished_at,
    )


def read_progress(run_id: str) -> RunProgress:
    with session_scope() as session:
        return run_progress(session, run_id)


def list_runs(session: Session, tenant_id: str, *, limit: int = 20) -> list[RescoreRun]:
    return list(
        session.scalars(
            select(RescoreRun)
            .where(RescoreRun.tenant_id == tenant_id)
            .order_by(RescoreRun.created_at.desc())
            .limit(limit)
        )
    )


# --------------------------------------------------------------------------- changing


def complete_if_done(session: Session, run_id: str) -> bool:
    """Mark the run completed once no turn of it is left unscored (exactly once)."""
    rid = uuid.UUID(run_id)
    unscored = exists().where(RescoreResult.run_id == rid, RescoreResult.scored_at.is_(None))
    done = session.execute(
        update(RescoreRun)
        .where(RescoreRun.id == rid, RescoreRun.status == RunStatus.RUNNING.value, ~unscored)
        .values(status=RunStatus.COMPLETED.value, finished_at=func.now())
        .returning(RescoreRun.tenant_id)
    ).first()
    if done is not None:
        log.info(
            f"rescoring run {run_id} completed",
            extra={"action": "rescore_completed", "tenant_id": done.tenant_id},
        )
    return done is not None


def cancel_run(run_id: str) -> RunProgress:
    """Stop a running run: batches not started do nothing, batches running stop soon."""
    with session_scope() as session:
        run = load_run(session, run_id)
        if run.status != RunStatus.RUNNING.value:
            raise InvalidInput("run", f"run {run_id} is {run.status}; only a running run cancels")
        session.execute(
            update(RescoreRun)
            .where(RescoreRun.id == run.id, RescoreRun.status == RunStatus.RUNNING.value)
            .values(status=RunStatus.CANCELLED.value, finished_at=func.now())
        )
        log.info(
            f"rescoring run {run_id} cancelled",
            extra={"action": "rescore_cancelled", "tenant_id": run.tenant_id},
        )
    return read_progress(run_id)


def unscored_batches(session: Session, run_id: str) -> list[int]:
    return list(
        session.scalars(
            select(RescoreResult.batch)
            .where(RescoreResult.run_id == uuid.UUID(run_id), RescoreResult.scored_at.is_(None))
            .distinct()
            .order_by(RescoreResult.batch)
        )
    )


def resume_run(run_id: str) -> int:
    """Re-open a running or cancelled run and re-enqueue its unscored batches.

    Safe at any time, and cheap on a run whose batches are still queued or running: one
    copy of a batch scores at a time (it claims the batch first, see ``batch.batch_claim``),
    so a second copy ends without calling a model, and a result is written only where none
    is yet. A batch whose worker died is claimable at once and scored again. Returns the
    batches sent.
    """
    with session_scope() as session:
        run = load_run(session, run_id)
        if run.status == RunStatus.COMPLETED.value:
            raise InvalidInput("run", f"run {run_id} is completed; there is nothing to resume")
        batches = unscored_batches(session, run_id)
        if not batches:
            complete_if_done(session, run_id)
            return 0
        session.execute(
            update(RescoreRun)
            .where(RescoreRun.id == run.id)
            .values(status=RunStatus.RUNNING.value, finished_at=None)
        )
        tenant_id = run.tenant_id
    sent = publish_batches(run_id, batches)
    log.info(
        f"rescoring run {run_id} resumed: {counted(sent, 'batch')} re-enqueued",
        extra={"action": "rescore_resumed", "tenant_id": tenant_id},
    )
    return sent
