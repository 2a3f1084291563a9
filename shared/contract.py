"""The wire between the client and the workers: task names, queues, payloads and results.

The client builds a turn's workflow from task *names* (Celery signatures by name), and
``workers/`` registers its tasks under the same names, so ``shared/`` never imports
``workers/``. Everything that crosses the broker is declared here:

- each task's payload (its kwargs) as a pydantic model, ``PAYLOADS`` by task name, which
  the workers validate at the door (``validate``: a bad payload is ``InvalidInput`` naming
  the field);
- every signature a process publishes, built by a function of this module;
- each task's result as a typed model, turned into JSON for Celery by ``to_wire`` and read
  back (by the merge from its chord's header results, by the workers' metrics) with
  ``from_wire``;
- the wire-level Celery settings (serialisation, routes, transport), because both sides
  must agree on them; worker-only tuning lives in ``workers/app.py``.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar, cast

from celery import Celery, chain, chord, signals
from celery.canvas import Signature
from pydantic import BaseModel, Field, ValidationError

from shared.config import Settings
from shared.errors import InvalidInput
from shared.schemas import Agent, Frozen, KbLevel, Orchestration, Topology

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


RESULT_BACKEND_CLASS = "shared.result_backend:RedisResultBackend"


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


# --------------------------------------------------------------------------- payloads

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``; anything else is a permanent error naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise InvalidInput(field, first.get("msg", "invalid")) from None


class Payload(Frozen):
    """A task's kwargs: ids and flags, never an object. Unknown keys are refused."""


class TurnRef(Payload):
    """The payload of the orchestrator, the researcher and the merge: the turn's id."""

    turn_id: Uuid


class AgentTaskPayload(TurnRef):
    retrieve: bool = False  # sequential topology: the agent does its own retrieval


class IngestPayload(Payload):
    """One queued document: the id of its job row, which holds the text."""

    job_id: Uuid


class RescoreBatchPayload(Payload):
    """Which run, which batch of it."""

    run_id: Uuid
    batch: Annotated[int, Field(ge=0, le=10_000_000)]


class NoPayload(Payload):
    """The maintenance tasks (run by beat) take nothing."""


PAYLOADS: dict[str, type[Payload]] = {
    ORCHESTRATOR_TASK: TurnRef,
    RESEARCHER_TASK: TurnRef,
    MERGE_TASK: TurnRef,
    **{name: AgentTaskPayload for name in AGENT_TASKS.values()},
    INGEST_TASK: IngestPayload,
    RESCORE_BATCH_TASK: RescoreBatchPayload,
    RELAY_TASK: NoPayload,
    SWEEP_TASK: NoPayload,
}


# --------------------------------------------------------------------------- signatures


def payload_of(name: str, **fields: Any) -> dict[str, Any]:
    """The kwargs of task ``name``, validated with its payload model (``InvalidInput``
    naming the field): a producer never publishes what the worker would refuse."""
    return validate(PAYLOADS[name], fields).model_dump()


def _signature(
    app: Celery, name: str, kwargs: dict[str, Any], *, immutable: bool = True
) -> Signature:
    return app.signature(name, kwargs=dict(kwargs), immutable=immutable)


def turn_workflow(app: Celery, *, turn_id: str, topology: Topology) -> Signature:
    """The Celery canvas that runs one turn up to its routing decision. A parallel turn's
    chord is published through shared/task_messages.py as the same messages (a test holds
    the two to the same fields); the other topologies through this canvas."""
    ref = payload_of(MERGE_TASK, turn_id=turn_id)  # each stage before the agent takes it
    if topology is Topology.PARALLEL:
        header = [
            _signature(app, ORCHESTRATOR_TASK, ref),
            _signature(app, RESEARCHER_TASK, ref),
        ]
        # The callback receives the header tasks' results: the outputs they committed.
        return chord(header, _signature(app, MERGE_TASK, ref, immutable=False), app=app)
    if topology is Topology.KB_FIRST:
        return chain(
            _signature(app, RESEARCHER_TASK, ref),
            _signature(app, ORCHESTRATOR_TASK, ref),
            _signature(app, MERGE_TASK, ref),
            app=app,
        )
    # Sequential: the orchestrator routes on its own and the agent does its own retrieval.
    return _signature(app, ORCHESTRATOR_TASK, ref)


def merge_signature(app: Celery, *, turn_id: str) -> Signature:
    """The merge alone, outside any chord: the sweeper's re-drive once both header outputs
    are durable (it then reads them from the turn's row)."""
    return _signature(app, MERGE_TASK, payload_of(MERGE_TASK, turn_id=turn_id))


def agent_signature(app: Celery, *, turn_id: str, agent: Agent, retrieve: bool) -> Signature:
    """The agent's task as a Celery signature, for a canvas or a caller of its own. A turn's
    merge publishes the same message through shared/task_messages.py (a test holds the two
    to the same fields)."""
    name = AGENT_TASKS[agent]
    return _signature(app, name, payload_of(name, turn_id=turn_id, retrieve=retrieve))


def ingest_signature(app: Celery, *, job_id: str) -> Signature:
    return _signature(app, INGEST_TASK, payload_of(INGEST_TASK, job_id=job_id))


def rescore_batch_signature(app: Celery, *, run_id: str, batch: int) -> Signature:
    kwargs = payload_of(RESCORE_BATCH_TASK, run_id=run_id, batch=batch)
    return _signature(app, RESCORE_BATCH_TASK, kwargs)


# --------------------------------------------------------------------------- results


class TaskResult(Frozen):
    """What a task returns. Celery carries it as JSON (``to_wire``), tagged with its
    ``kind`` (a field of each result type); ``from_wire`` reads it back."""


class OrchestratorResult(TaskResult):
    """The orchestration the orchestrator committed (or found committed): a chord header
    result, routed on by the merge."""

    kind: Literal["orchestrator"] = "orchestrator"
    orchestration: Orchestration


class ResearcherResult(TaskResult):
    """The researcher's committed output as the merge routes on it: a chord header result.
    The hits stay in the turn's row, where the agent reads them; only their count travels."""

    kind: Literal["researcher"] = "researcher"
    kb_information_level: KbLevel
    retrieval_failed: bool = False
    hits: int = Field(default=0, ge=0)


class MergeResult(TaskResult):
    """The route the merge wrote (or found written), whose agent it published."""

    kind: Literal["merge"] = "merge"
    next_agent: Agent
    routing_reason: str


class AgentResult(TaskResult):
    kind: Literal["agent"] = "agent"
    agent: Agent
    ended: bool  # this run ended the turn (committed its one reply), not a later duplicate
    next_turn: Uuid | None = None  # the conversation's turn this one handed over to


class TurnEnded(TaskResult):
    """A turn stage that did not run on: the turn had ended (``failed`` False), or this
    run ended it failed (the task guard: a poison pill, a retry it could not wait for)."""

    kind: Literal["turn_ended"] = "turn_ended"
    failed: bool = False
    reason: str | None = None


class IngestResult(TaskResult):
    kind: Literal["ingest"] = "ingest"
    outcome: str  # the document's outcome (stored, unchanged, rejected, ...) or the job's


class BatchEnd(StrEnum):
    DONE = "done"  # every turn of the batch has a result
    YIELDED = "yielded"  # its time slice ran out (or the budget said wait): re-enqueued
    CANCELLED = "cancelled"  # the run was cancelled (before or while it ran)
    NOT_RUNNING = "not_running"  # the run is completed, or gone
    BUSY = "busy"  # another copy of the batch holds its claim and scores it
    DROPPED = "dropped"  # it kept killing its worker: its turns stay unscored


class RescoreBatchResult(TaskResult):
    kind: Literal["rescore_batch"] = "rescore_batch"
    run_id: Uuid
    batch: int
    end: BatchEnd
    scored: int = 0  # results this task wrote
    already: int = 0  # results another copy of this batch wrote first


class RelayResult(TaskResult):
    kind: Literal["relay"] = "relay"
    sent: int  # dispatch intents published from the outbox
    held_released: int  # held turns let go
    held_expired: int  # held turns failed, held too long


class SweepResult(TaskResult):
    kind: Literal["sweep"] = "sweep"
    redriven: int  # turns published again from their last durable stage
    failed: int  # turns this sweep ended failed, out of attempts


RESULT_TYPES: tuple[type[TaskResult], ...] = (
    OrchestratorResult,
    ResearcherResult,
    MergeResult,
    AgentResult,
    TurnEnded,
    IngestResult,
    RescoreBatchResult,
    RelayResult,
    SweepResult,
)
_RESULT_OF_KIND: dict[str, type[TaskResult]] = {
    cast(str, cls.model_fields["kind"].default): cls for cls in RESULT_TYPES
}

R = TypeVar("R", bound=TaskResult)


def to_wire(result: TaskResult) -> dict[str, Any]:
    """A task's result as Celery carries it: JSON, tagged with its kind."""
    return result.model_dump(mode="json")


def from_wire(wire: Any, kind: type[R] | tuple[type[R], ...]) -> R | None:
    """The result ``to_wire`` made, if it is one of ``kind`` (a type, or a tuple of them;
    ``TaskResult`` for any); None for anything else: another kind, no kind, not a result.

    Only a wanted kind is validated, once; a malformed one raises ``InvalidInput``.
    """
    tag = wire.get("kind") if isinstance(wire, dict) else None
    found = _RESULT_OF_KIND.get(tag) if isinstance(tag, str) else None
    if found is None or not issubclass(found, kind):
        return None
    return validate(found, wire)
