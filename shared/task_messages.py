"""A turn's own task messages, pushed onto their Redis queues without kombu's producer.

A turn publishes three times on its way to a reply: its chord (both header tasks and the
chord's size), the merge (from the header task that completes the chord) and its agent
(from the merge). Through ``apply_async`` each message passes Celery's signature, routing
and option handling and then kombu's producer (its retry wrapper, declarations, encoding
and envelope), and a chord costs three round trips to Redis. Here Celery's AMQP layer
still builds the task message (``as_task_v2``: protocol 2, its headers, properties and
body), Celery's publish signals are sent as Celery sends them, and this module wraps the
message in kombu's Redis envelope and pushes it, the way kombu's Redis channel does, with
the chord's size in the same round trip as its header tasks (README, Speed, says what
that saves).

A worker receives what ``apply_async`` would have sent for the same task, field for field
but its ids and the time it was sent (tests/integration/test_task_messages.py compares
them), so stock Celery workers run these messages and Flower shows them as any
other. It assumes the broker and the result backend are one Redis, as chordline's single
``REDIS_URL`` makes them; everything else chordline publishes goes through Celery.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from celery import Celery, signals
from kombu.utils.functional import retry_over_time

from shared.contract import MERGE_TASK, TASK_ROUTES

# kombu's Redis envelope: the body in base64, delivered through the default exchange.
BODY_ENCODING = "base64"
PERSISTENT = 2
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError)
# Far below Celery's 1,024 characters of argsrepr and kwargsrepr, so nothing is cut.
PLAIN_TYPES = (str, bool, int)
PLAIN_REPR_ITEMS = 8
PLAIN_REPR_CHARS = 64


@dataclass(frozen=True)
class TaskMessage:
    """One task message, in kombu's Redis envelope, and the queue it goes to."""

    name: str
    queue: str
    envelope: str
    headers: dict[str, Any]
    body: Any


def task_message(
    app: Celery,
    name: str,
    kwargs: Mapping[str, Any],
    *,
    task_id: str | None = None,
    args: Sequence[Any] = (),
    group_id: str | None = None,
    group_index: int | None = None,
    chord: Mapping[str, Any] | None = None,
    reply_to: str | None = None,
) -> TaskMessage:
    """The message ``apply_async`` would publish for ``name`` from this process (the
    ``before_task_publish`` signal sent, as Celery sends it)."""
    task_id = task_id or str(uuid.uuid4())
    queue = TASK_ROUTES[name]["queue"]
    root_id, parent_id = _lineage(app)
    registered = cast(Any, app)._tasks.get(name)  # as send_task looks it up
    headers, properties, body, _ = cast(Any, app.amqp).as_task_v2(
        task_id,
        name,
        tuple(args),
        dict(kwargs),
        group_id=group_id,
        group_index=group_index,
        chord=dict(chord) if chord is not None else None,
        reply_to=reply_to or app.thread_oid,
        argsrepr=_plain_repr(tuple(args)),
        kwargsrepr=_plain_repr(dict(kwargs)),
        root_id=root_id,
        parent_id=parent_id,
        # as Task.apply_async sets it where the task is registered (a worker), else None
        ignore_result=registered.ignore_result if registered is not None else None,
    )
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=name,
            body=body,
            exchange="",
            routing_key=queue,
            declare=[],
            headers=headers,
            properties=properties,
            retry_policy=app.conf.task_publish_retry_policy,
        )
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            **properties,
            "delivery_mode": PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": BODY_ENCODING,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return TaskMessage(name, queue, json.dumps(envelope), headers, body)


def _plain_repr(value: tuple[Any, ...] | dict[str, Any]) -> str | None:
    """``repr`` of a flat tuple or dict of short strings, whole numbers, booleans and None, which is
    what Celery's ``saferepr`` writes for it, at a fraction of the cost; None (Celery's own
    then) for anything else."""
    items = value.values() if isinstance(value, dict) else value
    if len(items) > PLAIN_REPR_ITEMS or not all(
        item is None or (isinstance(item, PLAIN_TYPES) and len(str(item)) <= PLAIN_REPR_CHARS)
        for item in items
    ):
        return None
    return repr(value)


def _lineage(app: Celery) -> tuple[str | None, str | None]:
    """Root and parent ids as Celery sets them: from the task this thread is running."""
    parent = app.current_worker_task
    if parent is None:
        return None, None
    return parent.request.root_id or parent.request.id, parent.request.id


def push(
    app: Celery,
    client: redis.Redis,
    messages: Sequence[TaskMessage],
    *,
    before: Callable[[Any], None] | None = None,
) -> None:
    """Push ``messages`` onto their queues in one round trip, after whatever ``before`` adds
    to the same pipeline; retried on a lost connection as Celery's publish retry policy
    says, after which the error is the caller's. ``after_task_publish`` follows, as Celery
    sends it. ``client`` is the result backend's (chordline's broker and backend are one
    Redis): each thread has its own, as Celery gives each thread its own backend."""

    def one_round_trip() -> None:
        with client.pipeline(transaction=False) as pipe:
            if before is not None:
                before(pipe)
            for message in messages:
                pipe.lpush(message.queue, message.envelope)
            pipe.execute()

    policy = app.conf.task_publish_retry_policy or {}
    retry_over_time(
        one_round_trip,
        TRANSIENT_ERRORS,
        max_retries=policy.get("max_retries", 3) if app.conf.task_publish_retry else 0,
        interval_start=policy.get("interval_start", 0),
        interval_step=policy.get("interval_step", 0.2),
        interval_max=policy.get("interval_max", 0.2),
    )
    if signals.after_task_publish.receivers:
        for message in messages:
            signals.after_task_publish.send(
                sender=message.name,
                body=message.body,
                headers=message.headers,
                exchange="",
                routing_key=message.queue,
            )


# The options a turn's chord gives its merge: what the join checks before it pushes the
# merge itself (shared/result_backend.py).
MERGE_OPTIONS = frozenset({"task_id", "reply_to", "group_id"})


def merge_chord(
    app: Celery, kwargs: Mapping[str, Any], *, merge_id: str, group_id: str
) -> dict[str, Any]:
    """The chord's callback, with the merge's ``kwargs``, as Celery embeds it in each header
    task's message."""
    options = {"task_id": merge_id, "reply_to": app.thread_oid, "group_id": group_id}
    return {
        "task": MERGE_TASK,
        "args": [],
        "kwargs": dict(kwargs),
        "options": options,
        "subtask_type": None,
        "immutable": False,
    }
