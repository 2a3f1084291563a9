"""Worker metrics from Celery's signals: what each task cost, recorded where it ran.

Each worker process serves its metrics on a private port (see shared/metrics.py): the
threads pools from the worker's own process, a prefork pool through Prometheus'
multiprocess mode, summed by the parent. The handlers below only read clocks and the task's
request; the per-turn figures are read from Postgres off the task's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool

from shared import metrics
from shared.config import get_settings
from shared.contract import (
    AGENT_TASKS,
    INGEST_TASK,
    MERGE_TASK,
    ORCHESTRATOR_TASK,
    RESEARCHER_TASK,
    SENT_AT_HEADER,
    AgentResult,
    SweepResult,
    TurnEnded,
    from_wire,
)

log = logging.getLogger(__name__)

STAGE_OF_TASK = {
    ORCHESTRATOR_TASK: "orchestrator",
    RESEARCHER_TASK: "researcher",
    MERGE_TASK: "merge",
    INGEST_TASK: "ingest",
    **{name: "agent" for name in AGENT_TASKS.values()},
}

_started: dict[str, float] = {}  # task id → perf_counter at start; dict ops are atomic
_recorder = metrics.TurnRecorder()
_exporter: list[metrics.Exporter] = []
_enabled = threading.Event()


def stage_of(task_name: str) -> str:
    return STAGE_OF_TASK.get(task_name) or task_name.removeprefix("chordline.").split(".")[0]


def _sent_at(task: Any) -> float | None:
    request = task.request
    value = getattr(request, SENT_AT_HEADER, None)
    if value is None and isinstance(request.headers, dict):
        value = request.headers.get(SENT_AT_HEADER)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@signals.worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    if not get_settings().metrics.enabled:
        return
    pool = get_implementation(getattr(sender, "pool_cls", None) or "prefork")
    prefork = isinstance(pool, type) and issubclass(pool, PreforkPool)
    exporter = metrics.start_exporter(
        nodename=str(getattr(sender, "hostname", "")), prefork=prefork
    )
    if exporter is not None:
        _exporter.append(exporter)
        _enabled.set()


@signals.worker_shutdown.connect
def _stop_serving(**_: Any) -> None:
    while _exporter:
        _exporter.pop().close()


@signals.worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    if pid is not None:
        metrics.mark_child_dead(pid)


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not _enabled.is_set() or task_id is None or task is None:
        return
    _started[task_id] = time.perf_counter()
    sent_at = _sent_at(task)
    if sent_at is not None:
        queue = (task.request.delivery_info or {}).get("routing_key") or "unknown"
        metrics.instruments().queue_wait_seconds.labels(queue).observe(
            max(0.0, time.time() - sent_at)
        )


@signals.task_postrun.connect
def _task_finished(
    task_id: str | None = None,
    task: Any = None,
    kwargs: dict[str, Any] | None = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    if not _enabled.is_set() or task_id is None or task is None:
        return
    started = _started.pop(task_id, None)
    name = str(task.name)
    stage = stage_of(name)
    instruments = metrics.instruments()
    instruments.tasks.labels(name, state or "UNKNOWN").inc()
    if started is None:
        return
    duration_s = time.perf_counter() - started
    instruments.stage_seconds.labels(stage, name).observe(duration_s)
    turn_id = (kwargs or {}).get("turn_id")
    log.info(
        "task finished",
        extra={
            "action": "task_finished",
            "turn_id": turn_id,
            "stage": stage,
            "queue": (task.request.delivery_info or {}).get("routing_key"),
            "attempt": task.request.retries + 1,
            "duration_ms": round(duration_s * 1000, 1),
            "reason": state,
        },
    )
    _count_turns(state, turn_id, retval)


# The results the metrics read: only these kinds are validated, none of the others.
_COUNTED = (AgentResult, TurnEnded, SweepResult)


def _count_turns(state: str | None, turn_id: Any, retval: Any) -> None:
    """Turns an agent ended (it committed the reply, not a duplicate that found the turn
    ended), which the per-turn recorder reads; and turns ended failed, by the sweeper or
    by a stage that kept killing its worker."""
    result = from_wire(retval, _COUNTED)
    if isinstance(result, AgentResult):
        if state == "SUCCESS" and result.ended and isinstance(turn_id, str):
            _recorder.turn_finished(turn_id)
    elif isinstance(result, TurnEnded):
        if result.failed:
            metrics.instruments().turns.labels("failed").inc()
    elif isinstance(result, SweepResult) and result.failed:
        metrics.instruments().turns.labels("failed").inc(result.failed)


@signals.task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    if _enabled.is_set() and sender is not None:
        metrics.instruments().retries.labels(str(sender.name)).inc()


@signals.task_failure.connect
def _task_failed(
    sender: Any = None,
    exception: BaseException | None = None,
    kwargs: dict[str, Any] | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """Celery logs failures through its own loggers; this line carries the stable keys."""
    name = str(getattr(sender, "name", "unknown"))
    log.warning(
        "task failed",
        exc_info=(type(exception), exception, exception.__traceback__) if exception else None,
        extra={
            "action": "task_failed",
            "turn_id": (kwargs or {}).get("turn_id"),
            "stage": stage_of(name),
            "reason": f"{type(exception).__name__}: {exception}"[:500] if exception else None,
        },
    )
