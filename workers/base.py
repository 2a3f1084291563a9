"""The base of every chordline task: payload validation, origin, delivery-count guard."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.contract import SENT_AT_HEADER
from shared.errors import InvalidInput, TransientError
from shared.redis_conn import get_redis
from shared.turn.stage import StageOrigin

log = logging.getLogger(__name__)

RETRYABLE = (TransientError, OperationalError, RedisConnectionError)


class ChordlineTask(Task[Any, Any]):
    """Retries transient failures with exponential backoff and jitter; nothing else."""

    abstract = True
    autoretry_for = RETRYABLE
    retry_backoff = 0.5
    retry_backoff_max = 10
    retry_jitter = True
    max_retries = 5

    def origin(self) -> StageOrigin:
        request = self.request
        delivery_info = request.delivery_info or {}
        sent_at = getattr(request, SENT_AT_HEADER, None)
        if sent_at is None and isinstance(request.headers, dict):
            sent_at = request.headers.get(SENT_AT_HEADER)
        return StageOrigin(
            queue=delivery_info.get("routing_key"),
            worker=request.hostname,
            pid=__import__("os").getpid(),
            enqueued_at=float(sent_at) if sent_at else None,
            delivery=self.delivery_count(),
        )

    def delivery_count(self) -> int:
        """How often this message (this retry of this task) has been handed to a worker."""
        key = f"chordline:deliveries:{self.request.id}:{self.request.retries}"
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 86_400)
        count, _ = pipe.execute()
        return int(count)

    def over_delivered(self, origin: StageOrigin) -> bool:
        return origin.delivery > get_settings().celery.max_deliveries


def validate(model: Any, payload: dict[str, Any]) -> Any:
    """Validate a task payload at the door; a bad payload is a permanent error."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise InvalidInput(field, first.get("msg", "invalid")) from None


def run_turn_stage(task: ChordlineTask, payload: dict[str, Any], model: Any, stage: Any) -> Any:
    """Validate, guard against poison pills, then run one stage of the turn."""
    from shared.turn.recovery import end_turn_failed, relay_one

    ref = validate(model, payload)
    origin = task.origin()
    if task.over_delivered(origin):
        reason = (
            f"{task.name} was delivered {origin.delivery} times (limit "
            f"{get_settings().celery.max_deliveries}); it keeps killing its worker"
        )
        released = end_turn_failed(ref.turn_id, reason)
        if released:
            relay_one(*released)
        return {"status": "failed", "reason": reason}
    return stage(ref, origin)
