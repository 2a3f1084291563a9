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
from shared.db.session import check_connections_on_checkout
from shared.dispatch import set_dispatch_app

TASK_MODULES = [
    "workers.orchestrator",
    "workers.researcher",
    "workers.merge",
    "workers.agents",
    "workers.ingest",
    "workers.rescoring",
    "workers.maintenance",
]


def worker_config() -> dict[str, Any]:
    settings = get_settings()
    celery = settings.celery
    wire = wire_config(settings)
    return {
        **wire,
        # The Redis transport keeps every delivered, unacknowledged message in an "unacked"
        # index and gives it back to a queue once the visibility timeout has passed. Only
        # consumers run that restore, so it is worker-side: check every couple of seconds
        # (kombu's default scans only every 10th tick of 10 s, so a killed worker's turns
        # would wait ~100 s), and keep the restore mutex short so a worker killed while
        # holding it blocks restores for seconds, not the default five minutes.
        "broker_transport_options": {
            **wire["broker_transport_options"],
            "unacked_restore_interval": celery.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": max(10, celery.visibility_timeout_s),
        },
        # A task is acknowledged after it ran, and a worker that dies mid-task gives the
        # message back (a prefork child at once, a whole worker after the visibility
        # timeout); with idempotent stages a re-delivery changes nothing twice. A
        # delivery-count guard (workers/base.py) stops a poison pill from looping forever.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message reserved per execution slot: a busy worker does not hoard turns that
        # an idle worker could start now, and a killed worker takes few turns down with it.
        "worker_prefetch_multiplier": 1,
        # Prefork pools enforce these; the stages also carry the turn's own budget, which
        # bounds every provider call in any pool. The hard limit sits below the visibility
        # timeout (checked in CelerySettings), so Redis never redelivers a task that is
        # still allowed to run; retries wait at most the difference (workers/base.py).
        "task_soft_time_limit": celery.soft_time_limit_s,
        "task_time_limit": celery.hard_time_limit_s,
        # Celery results (chord counters) outlive any turn by far: a turn ends within
        # minutes, results expire after an hour. Nothing reads results for a turn's state:
        # Postgres holds it, so a flushed result backend costs at most a re-drive.
        "result_expires": celery.result_expires_s,
        # No STARTED state in the result backend: one Redis write per task saved; the
        # turn's own span in Postgres says when each stage started.
        "task_track_started": False,
        # No task events unless someone watches: three event messages per task (received,
        # started, succeeded) cost more CPU than a stage's own work. Flower turns them on
        # for the workers it watches (Celery's enable_events, every few seconds), so what
        # Flower shows is unchanged; `celery control enable_events` does it for other tools.
        "worker_send_task_events": False,
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
    check_connections_on_checkout(False)  # a stale connection fails the task, which retries
    return app


app = create_app()

import workers.lifecycle  # noqa: E402,F401  (connects the worker signal handlers)
from workers import metrics as _metrics  # noqa: E402,F401  (per-task metrics and logs)
from workers import telemetry as _telemetry  # noqa: E402,F401  (optional OpenTelemetry)
