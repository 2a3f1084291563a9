"""The base of every chordline task: payload validation, origin, delivery-count guard, retries.

Each task reads its kwargs through ``ChordlineTask.payload``, validated with its model in
shared/contract.py, and hands Celery its typed result as JSON through ``to_wire``.

Delivery is at least once (acks_late, reject_on_worker_lost), so every turn stage may run
again; three things keep that safe and bounded:

- the stages' writes are conditional, so a second run changes nothing twice;
- per-message delivery counters in Redis end a turn whose task keeps killing its worker
  (a poison pill: ``max_deliveries`` deliveries that started and never finished), failed
  with a reason, instead of looping; deliveries repeated for other reasons (a dropped
  connection, a retry) ran to their end and do not count;
- a retry never waits longer than the broker can hold a message unacknowledged: a retried
  task sits reserved (unacked) on its worker until its countdown ends, and Redis hands it to
  another worker once the visibility timeout passes, which would run it twice. Countdowns
  are capped at ``visibility_timeout - hard_time_limit``; a provider that asks for more
  (a 429 with a long Retry-After) ends the turn failed with that reason, not retried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import psycopg
from celery import Task
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.contract import PAYLOADS, SENT_AT_HEADER, TaskResult, TurnEnded, to_wire, validate
from shared.dispatch import publish_committed
from shared.errors import TransientError
from shared.redis_conn import get_redis
from shared.turn.stage import StageOrigin
from shared.turn_state import Actor

log = logging.getLogger(__name__)

# chordline's transient errors (BrokerUnavailable for a failed publish among them), a lost
# Postgres connection (through SQLAlchemy, or on the hot path's direct connections), and a
# Redis that dropped or did not answer in time.
RETRYABLE = (
    TransientError,
    OperationalError,
    psycopg.OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
)
DELIVERY_KEY_TTL_S = 86_400


def retry_after_s(exc: BaseException | None) -> float | None:
    """The delay a provider asked for (Retry-After), if the error carries one."""
    for name in ("retry_after_s", "retry_after"):
        value = getattr(exc, name, None)
        if isinstance(value, int | float) and value >= 0:
            return float(value)
    return None


def max_retry_countdown_s() -> float:
    """The longest a retry may wait and still finish before the broker redelivers it."""
    return get_settings().celery.max_retry_countdown_s


class ChordlineTask(Task[Any, Any]):
    """Retries transient failures with exponential backoff and jitter; nothing else."""

    abstract = True
    autoretry_for = RETRYABLE
    retry_backoff = 0.5
    retry_backoff_max = 10
    retry_jitter = True
    max_retries = 5

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Honour a provider's Retry-After, never beyond what the broker can hold safely."""
        wanted = max(countdown or 0.0, retry_after_s(exc) or 0.0)
        return super().retry(
            args=args,
            kwargs=kwargs,
            exc=exc,
            throw=throw,
            eta=None,
            countdown=min(wanted, max_retry_countdown_s()),
            max_retries=max_retries,
            **options,
        )

    def payload(self, kwargs: dict[str, Any]) -> Any:
        """This task's kwargs, validated with its payload model (shared/contract.py
        ``PAYLOADS``); a bad payload is a permanent error naming the field."""
        return validate(PAYLOADS[self.name], kwargs)

    def origin(self) -> StageOrigin:
        request = self.request
        delivery_info = request.delivery_info or {}
        sent_at = getattr(request, SENT_AT_HEADER, None)
        if sent_at is None and isinstance(request.headers, dict):
            sent_at = request.headers.get(SENT_AT_HEADER)
        return StageOrigin(
            queue=delivery_info.get("routing_key"),
            worker=request.hostname,
            pid=os.getpid(),
            enqueued_at=float(sent_at) if sent_at else None,
            delivery=self.delivery_count(),
        )

    def _delivery_key(self, what: str) -> str:
        return f"chordline:{what}:{self.request.id}:{self.request.retries}"

    def is_redelivery(self) -> bool:
        """kombu marks every message it gives back to a queue (a dead worker's, an unacked
        one past the visibility timeout, a rejected one) as redelivered."""
        headers = self.request.headers if isinstance(self.request.headers, dict) else {}
        return bool((self.request.delivery_info or {}).get("redelivered")) or bool(
            headers.get("redelivered")
        )

    def delivery_count(self) -> int:
        """How often this message (this retry of this task) has been handed to a worker.

        A first delivery costs nothing: counting starts with the first redelivery, which
        adds the uncounted first one. A redelivery also reads how many of the earlier
        deliveries ran to their end, in the same round trip: the others died with their
        process (see ``crashed_deliveries``). A first delivery that finished but was
        redelivered anyway (its ack was lost) then counts as one crash: the limit is
        several, so that costs nothing but one more delivery in a rare case.
        """
        self.request.chordline_counted = self.is_redelivery()  # type: ignore[attr-defined]
        if not self.request.chordline_counted:  # type: ignore[attr-defined]
            self.request.chordline_finished = 0  # type: ignore[attr-defined]
            return 1
        key = self._delivery_key("deliveries")
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, DELIVERY_KEY_TTL_S)
        pipe.get(self._delivery_key("finished"))
        count, _, finished = pipe.execute()
        self.request.chordline_finished = int(finished or 0)  # type: ignore[attr-defined]
        return int(count) + 1

    def mark_finished(self) -> None:
        """This delivery ran to its end (whatever the outcome): it did not kill its process.

        Only counted (re)deliveries need marking; see ``delivery_count``.
        """
        if not getattr(self.request, "chordline_counted", True):
            return
        key = self._delivery_key("finished")
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, DELIVERY_KEY_TTL_S)
        pipe.execute()

    def crashed_deliveries(self, origin: StageOrigin) -> int:
        """Earlier deliveries that started and never finished: their process died under them.

        A delivery repeated because a connection dropped, or a retry, finished and does not
        count; a task that keeps killing its worker does.
        """
        finished = int(getattr(self.request, "chordline_finished", 0) or 0)
        return max(0, origin.delivery - 1 - finished)

    def over_delivered(self, origin: StageOrigin) -> bool:
        return self.crashed_deliveries(origin) >= get_settings().celery.max_deliveries


def _end_turn(turn_id: str, reason: str) -> TurnEnded:
    from shared.turn.recovery import end_turn_failed

    ending = end_turn_failed(turn_id, reason, actor=Actor.TASK_GUARD)
    if ending.released:
        publish_committed([ending.released])
    # failed only when this call ended the turn: the metrics count those
    return TurnEnded(failed=ending.ended, reason=reason)


def _poison_reason(task: ChordlineTask, origin: StageOrigin) -> str:
    return (
        f"{task.name} was delivered {origin.delivery} times and its worker died during "
        f"{task.crashed_deliveries(origin)} of them (limit "
        f"{get_settings().celery.max_deliveries}); it keeps killing its worker"
    )


def _wait_too_long_reason(task: ChordlineTask, exc: BaseException, wait_s: float) -> str:
    celery = get_settings().celery
    return (
        f"{task.name}: the provider asked to retry after {wait_s:g} s, longer than a task "
        f"may wait ({celery.max_retry_countdown_s:g} s) without Redis redelivering it "
        f"(visibility timeout {celery.visibility_timeout_s} s); not retried: {exc}"
    )


def run_turn_stage(
    task: ChordlineTask, payload: dict[str, Any], stage: Callable[[Any, StageOrigin], TaskResult]
) -> dict[str, Any]:
    """Validate, guard against poison pills, then run one stage of the turn; its result as
    Celery carries it."""
    ref = task.payload(payload)
    origin = task.origin()
    if task.over_delivered(origin):
        return to_wire(_end_turn(ref.turn_id, _poison_reason(task, origin)))
    try:
        return to_wire(stage(ref, origin))
    except RETRYABLE as exc:
        wait_s = retry_after_s(exc)
        if wait_s is not None and wait_s > max_retry_countdown_s():
            return to_wire(_end_turn(ref.turn_id, _wait_too_long_reason(task, exc, wait_s)))
        raise
    finally:
        _mark_finished(task)


def _mark_finished(task: ChordlineTask) -> None:
    try:
        task.mark_finished()
    except RETRYABLE:  # Redis is down: at worst this delivery counts as one that crashed
        log.warning(
            "delivery not marked finished",
            extra={"action": "delivery_mark_failed", "stage": task.name},
        )


# Test-only: the fault-injection suite starts its workers with CHORDLINE_FAULT_MARKER set.
# Only then is workers/fault_hooks.py imported, and it wraps each stage this runner runs;
# a worker started without it never loads the hooks. Read once, when the worker imports its
# tasks (every task module imports this runner from here).
if os.environ.get("CHORDLINE_FAULT_MARKER"):
    from workers.fault_hooks import installed

    run_turn_stage = installed(run_turn_stage)
