"""The wire between the client and the workers: task names, queues and payloads.

The client builds a turn's workflow from task *names* (Celery signatures by name), and
``workers/`` registers its tasks under the same names, so ``shared/`` never imports
``workers/``. The wire-level Celery settings (serialisation, routes, transport) live here
because both sides must agree on them; worker-only tuning lives in ``workers/app.py``.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, chain, chord, signals
from celery.backends.redis import RedisBackend
from celery.canvas import Signature

from shared.config import Settings
from shared.schemas import Agent, Topology

# Queues, one Procfile process type each.
ORCHESTRATOR_QUEUE = "orchestrator"
RESEARCHER_QUEUE = "researcher"
MERGE_QUEUE = "merge"
AGENTS_QUEUE = "agents"
INGEST_QUEUE = "ingest"
RESCORING_QUEUE = "rescoring"
MAINTENANCE_QUEUE = "maintenance"
ALL_QUEUES = (
    ORCHESTRATOR_QUEUE,
    RESEARCHER_QUEUE,
    MERGE_QUEUE,
    AGENTS_QUEUE,
    INGEST_QUEUE,
    RESCORING_QUEUE,
    MAINTENANCE_QUEUE,
)
TURN_QUEUES = (ORCHESTRATOR_QUEUE, RESEARCHER_QUEUE, MERGE_QUEUE, AGENTS_QUEUE)

# Task names.
ORCHESTRATOR_TASK = "chordline.orchestrator"
RESEARCHER_TASK = "chordline.researcher"
MERGE_TASK = "chordline.merge"
AGENT_TASKS = {agent: f"chordline.agent.{agent.value}" for agent in Agent}
INGEST_TASK = "chordline.kb.ingest_document"
RELAY_TASK = "chordline.maintenance.relay_outbox"
SWEEP_TASK = "chordline.maintenance.sweep_stuck_turns"
RESCORE_BATCH_TASK = "chordline.rescoring.score_batch"

TASK_ROUTES: dict[str, dict[str, str]] = {
    ORCHESTRATOR_TASK: {"queue": ORCHESTRATOR_QUEUE},
    RESEARCHER_TASK: {"queue": RESEARCHER_QUEUE},
    MERGE_TASK: {"queue": MERGE_QUEUE},
    **{name: {"queue": AGENTS_QUEUE} for name in AGENT_TASKS.values()},
    INGEST_TASK: {"queue": INGEST_QUEUE},
    RELAY_TASK: {"queue": MAINTENANCE_QUEUE},
    SWEEP_TASK: {"queue": MAINTENANCE_QUEUE},
    RESCORE_BATCH_TASK: {"queue": RESCORING_QUEUE},
}

SENT_AT_HEADER = "chordline_sent_at"


class RedisResultBackend(RedisBackend):
    """Celery's Redis backend without the per-publish result subscription.

    Celery subscribes the publisher to every task's result channel (and, for a chord, to
    its header tasks' channels as it builds the group result), so that ``AsyncResult.get()``
    can be woken up. chordline never waits on Celery results (Postgres holds every stage's
    output), so each publish would only pay for SUBSCRIBE round trips and leave
    subscriptions behind; and with Redis down, the chord's subscription would fail with a
    RuntimeError before the publish itself could report the outage. Chord counting does not
    depend on it.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result  # nobody waits on it: no drainer, no subscription

    def on_result_fulfilled(self, result: Any) -> None:
        return None  # nothing was subscribed, so there is nothing to unsubscribe


RESULT_BACKEND_CLASS = f"{__name__}:RedisResultBackend"


def wire_config(settings: Settings) -> dict[str, Any]:
    """What both the producer and the workers must agree on."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": f"{RESULT_BACKEND_CLASS}+{settings.redis_url}",
        # JSON only: a pickle message pushed onto a queue is refused, never executed.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": TASK_ROUTES,
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_create_missing_queues": True,
        # A message that Redis hands out and nobody acks comes back after this; it must be
        # longer than any task may run (hard time limit), or running work is duplicated.
        "broker_transport_options": {
            "visibility_timeout": settings.celery.visibility_timeout_s,
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "redis_socket_keepalive": True,
        "result_expires": settings.celery.result_expires_s,
        # Publishing retries if Redis blips; beyond that the caller gets an error.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.05,
            "interval_step": 0.2,
            "interval_max": 1.0,
        },
        "broker_connection_retry_on_startup": True,
        "broker_pool_limit": 50,
        # No "task-sent" event per publish: Flower learns of a task when a worker receives
        # it, and the publisher saves a Redis round trip on every enqueue.
        "task_send_sent_event": False,
        "enable_utc": True,
    }


def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every published task carries the time it was sent, so spans can show queue wait."""
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


def stamp_published_tasks() -> None:
    """Connect the sent-at stamp for every task this process publishes (idempotent)."""
    signals.before_task_publish.connect(
        _stamp_sent_at, weak=False, dispatch_uid="chordline-sent-at"
    )


def make_celery(main: str, settings: Settings) -> Celery:
    """A producer-only app: what a client process needs to publish turns."""
    app = Celery(main, set_as_current=False)
    app.conf.update(wire_config(settings))
    stamp_published_tasks()
    return app


def _turn_sig(
    app: Celery, name: str, turn_id: str, *, immutable: bool = True, **kwargs: Any
) -> Signature:
    return app.signature(name, kwargs={"turn_id": turn_id, **kwargs}, immutable=immutable)


def turn_workflow(app: Celery, *, turn_id: str, topology: Topology) -> Signature:
    """The Celery canvas that runs one turn up to its routing decision."""
    if topology is Topology.PARALLEL:
        header = [
            _turn_sig(app, ORCHESTRATOR_TASK, turn_id),
            _turn_sig(app, RESEARCHER_TASK, turn_id),
        ]
        # The callback receives the header tasks' results: the outputs they committed.
        return chord(header, _turn_sig(app, MERGE_TASK, turn_id, immutable=False), app=app)
    if topology is Topology.KB_FIRST:
        return chain(
            _turn_sig(app, RESEARCHER_TASK, turn_id),
            _turn_sig(app, ORCHESTRATOR_TASK, turn_id),
            _turn_sig(app, MERGE_TASK, turn_id),
            app=app,
        )
    # Sequential: the orchestrator routes on its own and the agent does its own retrieval.
    return _turn_sig(app, ORCHESTRATOR_TASK, turn_id)


def agent_signature(app: Celery, *, turn_id: str, agent: Agent, retrieve: bool) -> Signature:
    return _turn_sig(app, AGENT_TASKS[agent], turn_id, retrieve=retrieve)
