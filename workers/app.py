"""The Celery app and the worker-side configuration, each value chosen on purpose.

Settings are read lazily, when Celery first needs its configuration, never at import.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.config import get_settings
from shared.contract import (
    MAINTENANCE_QUEUE,
    RELAY_TASK,
    SWEEP_TASK,
    stamp_published_tasks,
    wire_config,
)
from shared.dispatch import set_dispatch_app

TASK_MODULES = [
    "workers.orchestrator",
    "workers.researcher",
    "workers.merge",
    "workers.agents",
    "workers.ingest",
    "workers.maintenance",
]


def worker_config() -> dict[str, Any]:
    settings = get_settings()
    celery = settings.celery
    return {
        **wire_config(settings),
        # A task is acknowledged after it ran, and a worker that dies mid-task gives the
        # message back; with idempotent stages a re-delivery changes nothing twice. A
        # delivery-count guard (workers/base.py) stops a poison pill from looping forever.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message reserved per execution slot: a busy worker does not hoard turns that
        # an idle worker could start now.
        "worker_prefetch_multiplier": 1,
        # Prefork pools enforce these; the stages also carry the turn's own budget, which
        # bounds every provider call in any pool.
        "task_soft_time_limit": celery.soft_time_limit_s,
        "task_time_limit": celery.hard_time_limit_s,
        # No STARTED state in the result backend: one Redis write per task saved; the
        # turn's own span in Postgres says when each stage started.
        "task_track_started": False,
        # Events for Flower.
        "worker_send_task_events": True,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_lost_wait": 20.0,
        "beat_schedule": {
            "relay-outbox": {
                "task": RELAY_TASK,
                "schedule": celery.relay_interval_s,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": celery.relay_interval_s * 4},
            },
            "sweep-stuck-turns": {
                "task": SWEEP_TASK,
                "schedule": celery.sweeper_interval_s,
                "options": {"queue": MAINTENANCE_QUEUE, "expires": celery.sweeper_interval_s * 4},
            },
        },
    }


def create_app() -> Celery:
    app = Celery("chordline", include=TASK_MODULES, set_as_current=True)
    app.add_defaults(worker_config)  # evaluated on first use of app.conf, not now
    stamp_published_tasks()
    set_dispatch_app(app)
    return app


app = create_app()

import workers.lifecycle  # noqa: E402,F401  (connects the worker signal handlers)
from workers import metrics as _metrics  # noqa: E402,F401  (per-task metrics and logs)
