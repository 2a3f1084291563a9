"""OpenTelemetry spans per task, from Celery's signals, when configured (shared/telemetry.py)."""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from shared.config import get_settings
from shared.telemetry import StageTracer, shutdown_tracing, stage_tracer
from workers.metrics import stage_of


def _tracer(task: Any) -> StageTracer | None:
    settings = get_settings().telemetry
    if not settings.enabled:
        return None
    return stage_tracer(settings, process=f"{task.request.hostname or 'worker'}:{os.getpid()}")


@signals.task_prerun.connect
def _start_span(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None:
        return
    tracer = _tracer(task)
    if tracer is None:
        return
    request = task.request
    turn_id = (request.kwargs or {}).get("turn_id")
    tracer.start(
        task_id,
        task_name=str(task.name),
        stage=stage_of(str(task.name)),
        turn_id=turn_id if isinstance(turn_id, str) else None,
        attributes={
            "messaging.system": "redis",
            "messaging.destination.name": (request.delivery_info or {}).get("routing_key"),
            "messaging.message.id": task_id,
            "celery.worker": request.hostname,
            "celery.retries": request.retries,
        },
    )


@signals.task_postrun.connect
def _end_span(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    if task_id is None or task is None:
        return
    tracer = _tracer(task)
    if tracer is not None:
        tracer.end(task_id, state=state)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_spans(**_: Any) -> None:
    shutdown_tracing()
