"""Queue ``rescoring``: one batch of a re-scoring run per task, on workers of its own."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import signals

from shared.contract import (
    RESCORE_BATCH_TASK,
    RESCORING_QUEUE,
    BatchEnd,
    RescoreBatchPayload,
    RescoreBatchResult,
    to_wire,
)
from shared.rescoring.batch import score_batch
from workers.app import app
from workers.base import RETRYABLE, ChordlineTask

log = logging.getLogger(__name__)


@app.task(name=RESCORE_BATCH_TASK, bind=True, base=ChordlineTask, ignore_result=True)
def score_rescoring_batch(self: ChordlineTask, /, **payload: Any) -> dict[str, Any]:
    ref: RescoreBatchPayload = self.payload(payload)
    origin = self.origin()
    if self.over_delivered(origin):
        # It keeps killing its worker: leave its turns unscored (resume can try again).
        log.error(
            f"rescoring run {ref.run_id} batch {ref.batch} dropped after "
            f"{origin.delivery} deliveries",
            extra={"action": "rescore_batch_dropped", "queue": origin.queue},
        )
        dropped = RescoreBatchResult(run_id=ref.run_id, batch=ref.batch, end=BatchEnd.DROPPED)
        return to_wire(dropped)
    try:
        return to_wire(score_batch(ref.run_id, ref.batch))
    finally:
        _finished(self)


def _finished(task: ChordlineTask) -> None:
    """This delivery ran to its end: only deliveries that die with their process count
    towards the poison-pill limit."""
    try:
        task.mark_finished()
    except RETRYABLE:  # Redis is down: at worst this delivery counts as one that crashed
        log.warning(
            "delivery not marked finished",
            extra={"action": "delivery_mark_failed", "queue": RESCORING_QUEUE},
        )


def share_niceness_with_session() -> int | None:
    """Give this process's niceness to its session's scheduling group; returns it if done.

    The Procfile starts the rescoring worker niced, but with Linux's autogroup scheduling
    (the default on desktops and many servers) the CPU is shared between sessions first,
    and a worker started in a session of its own competes with the live workers' sessions
    as an equal whatever its nice value. Setting the autogroup's nice puts the whole session
    behind them. Only a session leader does it: a worker that shares its session (e.g. under
    a Procfile runner) would otherwise slow down the live workers in the same session.
    """
    autogroup = Path("/proc/self/autogroup")
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness <= 0 or os.getsid(0) != os.getpid() or not autogroup.exists():
        return None
    try:
        autogroup.write_text(str(niceness))
    except OSError:
        return None
    return niceness


@signals.celeryd_after_setup.connect
def _behind_live_workers(sender: str, instance: Any, **_: Any) -> None:
    queues = set(instance.app.amqp.queues.consume_from or {})
    if queues == {RESCORING_QUEUE}:
        niceness = share_niceness_with_session()
        log.info(
            f"rescoring worker at nice {os.getpriority(os.PRIO_PROCESS, 0)}"
            + (f", its session's scheduling group too ({niceness})" if niceness else ""),
            extra={"action": "rescoring_priority", "queue": RESCORING_QUEUE},
        )
