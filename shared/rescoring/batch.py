"""One batch of a run: score its unscored turns, write their results, yield when told to.

A batch task loads its unscored result rows and the turns' contexts in one transaction,
then decides each turn with the model-call budget's permission, writing results every few
turns. It stops early when the run is cancelled, and gives its worker back (re-enqueuing
itself for the rest) when its time slice is over, whether it spent the slice working or
waiting for the budget: live traffic comes first, and no batch holds a worker for long.

One copy of a batch scores at a time. A batch can have two copies (``resume`` on a running
run re-publishes batches still queued or running; the broker redelivers a message whose
worker died), and both would load the same unscored rows and pay the models for each turn.
So a copy first claims its (run, batch) with a session-level Postgres advisory lock, held
on a connection of its own that sits idle, outside any transaction, while the models are
called. A copy that finds the claim taken ends at once (``BUSY``) without calling a model:
the holder is alive and scores the batch, or re-enqueues it when its slice is over. The
claim goes with its holder: released when the copy ends, and by Postgres the moment the
holder's connection closes, so a batch whose worker died is claimable again at once (its
message comes back after the visibility timeout, and ``resume`` re-publishes it). Once the
claim is released, a copy that stopped early for a cancelled run re-enqueues the batch if
the run was resumed meanwhile: a copy of the resume may have found the claim still taken.
A result is also written only where none is yet, so even two copies never write one twice.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.contract import BatchEnd, RescoreBatchResult
from shared.db.models import Turn
from shared.db.session import get_engine, session_scope
from shared.providers.base import ConversationContext
from shared.providers.limits import rescoring_lane
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


def batch_lock_key(run_id: uuid.UUID, batch: int) -> int:
    """The advisory lock key of a (run, batch): 64 bits of a keyed hash, so that keys of
    other batches, or other advisory locks, collide only by a 1 in 2**64 chance."""
    digest = hashlib.blake2b(
        f"{run_id}:{batch}".encode(), digest_size=8, person=b"chordline-rsb"
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def batch_claim(run_id: uuid.UUID, batch: int) -> Iterator[bool]:
    """Claim the batch for the block; yields False (and holds nothing) when another copy
    holds it. The lock is the connection's session's, not a transaction's: the connection
    idles outside any transaction while the batch scores, holding no snapshot."""
    key = batch_lock_key(run_id, batch)
    conn = get_engine().connect()
    claimed = False
    try:
        claimed = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
        conn.commit()
        yield claimed
    finally:
        try:
            if claimed:
                conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
        except DBAPIError:
            # The connection broke, and the lock went with its session. Whatever state it
            # is in, a connection that may hold the lock never goes back to the pool.
            conn.invalidate()
        finally:
            conn.close()


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


def score_batch(run_id: str, batch: int) -> RescoreBatchResult:
    rid = uuid.UUID(run_id)
    with batch_claim(rid, batch) as claimed:
        if not claimed:
            log.info(
                f"rescoring run {run_id} batch {batch}: another copy is scoring it",
                extra={"action": "rescore_batch_busy"},
            )
            return RescoreBatchResult(run_id=run_id, batch=batch, end=BatchEnd.BUSY)
        scored = _score_claimed(rid, batch)
    # The claim is released before a yielded batch is re-enqueued: its next copy must find
    # the batch free.
    return _finish(run_id, batch, scored)


@dataclass(frozen=True)
class _Scored:
    spec: RunSpec | None
    end: BatchEnd
    written: int = 0
    already: int = 0


def _score_claimed(rid: uuid.UUID, batch: int) -> _Scored:
    with session_scope() as session:
        spec, early_end, pending = _load_batch(session, rid, batch)
    if spec is None:
        return _Scored(None, early_end or BatchEnd.NOT_RUNNING)
    budget = tenant_budget(spec.tenant_id)
    until = time.monotonic() + time_slice_s()
    end, written, already, buffer = BatchEnd.DONE, 0, 0, []
    last_flush = time.monotonic()
    for item in pending:
        calls = len(stages_to_run(item.turn, spec.stages))
        if time.monotonic() >= until or not budget.acquire(calls, until=until):
            end = BatchEnd.YIELDED
            break
        with rescoring_lane():  # its model calls leave the live reserve of shared limits alone
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
    return _Scored(spec, end, written, already)


def _finish(run_id: str, batch: int, scored: _Scored) -> RescoreBatchResult:
    end, written, already = scored.end, scored.written, scored.already
    if end is BatchEnd.YIELDED:
        publish_batches(run_id, [batch])
    elif end is BatchEnd.DONE:
        with session_scope() as session:
            complete_if_done(session, run_id)
    elif end is BatchEnd.CANCELLED:
        # Resumed while this copy held the claim? The resume's copy of the batch may have
        # found it taken and ended: re-enqueue (a spare copy finds the rows scored, or the
        # claim taken, and ends without a model call).
        with session_scope() as session:
            resumed = _run_is_running(session, uuid.UUID(run_id))
        if resumed:
            publish_batches(run_id, [batch])
    if scored.spec is not None:
        log.info(
            f"rescoring run {run_id} batch {batch}: {end.value}, {written} scored"
            + (f", {already} already scored elsewhere" if already else ""),
            extra={"action": f"rescore_batch_{end.value}", "tenant_id": scored.spec.tenant_id},
        )
    return RescoreBatchResult(run_id=run_id, batch=batch, end=end, scored=written, already=already)
