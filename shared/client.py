"""The Python client for backend services: enqueue_turn, get_turn, wait_for_turn, stream_turn.

A turn exists once ``enqueue_turn`` returns: its row and its dispatch intent are committed
in one transaction, and the workflow is published after the commit (see shared/dispatch.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from shared.admission import (
    Admitted,
    admit,
    end_in_redis,
    forget,
    let_go_safely,
    limited,
    schedule_release,
)
from shared.config import get_settings
from shared.db.direct import direct_connection
from shared.db.session import session_scope, transient_database_failures
from shared.db.tenants import recent_tenant_settings
from shared.db.turns import (
    AcceptedTurn,
    Interruption,
    accept_turn,
    find_by_idempotency_key,
    interrupt_active_turn,
    is_idempotency_conflict,
    load_turn,
    turn_exists,
)
from shared.dispatch import dispatch_committed
from shared.errors import (
    AdmissionRefused,
    IdempotencyConflict,
    InvalidInput,
    TurnFailed,
    TurnNotFound,
    TurnTimeout,
    UnknownTenant,
)
from shared.ids import time_ordered_uuid
from shared.schemas import TERMINAL_STATUSES, Admission, TurnStatus
from shared.streaming import StreamEvent, follow, read_events
from shared.validation import check_idempotency_key, check_message, check_slug, check_turn_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnView:
    """A turn as a client sees it."""

    id: str
    tenant_id: str
    conversation_id: str
    seq: int
    status: str
    topology: str
    message: str
    carried_message: str | None  # the messages of the turns this one interrupted
    phase: str | None
    intent: str | None
    proposed_agent: str | None
    confidence: float | None
    kb_information_level: str | None
    next_agent: str | None
    routing_reason: str | None
    agent_response: str | None
    agent_fallback: bool | None
    agent_note: str | None
    failure_reason: str | None
    accepted_at: float
    completed_at: float | None
    usage: dict[str, Any]

    @property
    def latency_ms(self) -> float | None:
        return None if self.completed_at is None else (self.completed_at - self.accepted_at) * 1000

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES


# What a caller of enqueue_turn is told to do when Postgres cannot be reached.
SAFE_RETRY = "retrying with the same idempotency_key is safe (it never makes a second turn)"


def enqueue_turn(
    tenant: str, conversation: str, message: str, idempotency_key: str | None = None
) -> str:
    """Accept a turn and return its id. Validates everything before writing anything.

    The same idempotency key (per tenant) with the same conversation and message returns the
    same turn, and enqueues nothing new; with another conversation or message it raises
    ``IdempotencyConflict``. ``DatabaseUnavailable`` (transient) when Postgres cannot be
    reached: retrying with the same key is safe.

    Admission (the tenant's ``admission`` settings, one Redis round trip): over a limit the
    turn is refused (``AdmissionRefused``, with ``retry_after_s``) or, with ``over_limit =
    hold``, accepted held and dispatched in order once the tenant has room. With
    ``in_flight_policy = interrupt`` the conversation's turn in flight is cancelled and this
    turn carries its message.
    """
    settings = get_settings()
    check_slug("tenant", tenant)
    check_slug("conversation", conversation, max_chars=settings.turn.max_id_chars)
    check_message(message, max_chars=settings.turn.max_message_chars)
    key = check_idempotency_key(idempotency_key)
    with transient_database_failures(SAFE_RETRY):
        tenant_settings = recent_tenant_settings.get(tenant)
    turn_id = str(time_ordered_uuid())  # new turns go to the end of the turns' indexes
    policy = tenant_settings.admission
    admitted = _admit(tenant, turn_id, policy, key, conversation=conversation, message=message)
    if isinstance(admitted, str):  # refused, but the key's turn was accepted before
        return admitted
    try:
        with transient_database_failures(SAFE_RETRY):
            accepted = _accept(
                tenant,
                conversation,
                message,
                key,
                turn_id=turn_id,
                topology=tenant_settings.topology.value,
                reject_when_busy=tenant_settings.in_flight_policy == "reject",
                held=admitted is not None and admitted.held,
                interrupt=tenant_settings.in_flight_policy == "interrupt",
            )
    except BaseException:
        if admitted is not None:
            forget(tenant, turn_id)
        raise
    if isinstance(accepted, str):  # the key's earlier turn: published when it was accepted
        if admitted is not None:
            forget(tenant, turn_id)
        return accepted
    if accepted.interrupted is not None:
        _end_interrupted(accepted.interrupted, by=accepted.turn.turn_id, policy=policy)
    turn = accepted.turn
    if turn.status is TurnStatus.QUEUED:
        dispatch_committed([(turn.turn_id, turn.topology)])
    elif admitted is not None and admitted.held and admitted.wait_s > 0:
        schedule_release(tenant, admitted.wait_s)
    return turn.turn_id


def _admit(
    tenant: str,
    turn_id: str,
    policy: Admission,
    key: str | None,
    *,
    conversation: str,
    message: str,
) -> Admitted | str | None:
    """The tenant's admission of this turn (one Redis round trip), None when the tenant has
    no limits or Redis cannot be reached (Postgres, the system of record, still takes the
    turn: admission protects the fleet, it never loses a turn). AdmissionRefused over a
    limit, unless the idempotency key's turn was accepted before: then its id."""
    if not limited(policy):
        return None
    try:
        return admit(tenant, turn_id, policy, order=time.time())
    except AdmissionRefused:
        if key is not None:
            with transient_database_failures(SAFE_RETRY):
                earlier = _earlier_turn(tenant, key, conversation=conversation, message=message)
            if earlier is not None:
                return earlier
        raise
    except redis.RedisError as exc:
        log.warning(
            "admission skipped: Redis unavailable",
            extra={
                "action": "admission_skipped",
                "tenant_id": tenant,
                "reason": type(exc).__name__,
            },
        )
        return None


def _end_interrupted(interrupted: Interruption, *, by: str, policy: Admission) -> None:
    """The cancelled turn's end in Redis: its stream's cancel marker, its admission slot."""
    reason = interrupt_reason(by)
    log.info(
        "turn cancelled",
        extra={
            "action": "turn_cancelled",
            "turn_id": interrupted.turn_id,
            "tenant_id": interrupted.tenant_id,
            "reason": reason,
        },
    )
    released = end_in_redis(
        interrupted.turn_id,
        TurnStatus.CANCELLED.value,
        tenant=interrupted.tenant_id,
        policy=policy,
        cancel_reason=reason,
    )
    let_go_safely(interrupted.tenant_id, released)


def interrupt_reason(turn_id: str) -> str:
    return f"interrupted by a later message of its conversation (turn {turn_id})"


@dataclass(frozen=True)
class _Accepted:
    turn: AcceptedTurn
    interrupted: Interruption | None = None


def _accept(
    tenant: str,
    conversation: str,
    message: str,
    key: str | None,
    *,
    turn_id: str,
    topology: str,
    reject_when_busy: bool,
    held: bool,
    interrupt: bool,
) -> _Accepted | str:
    """The new turn, accepted in one statement (with ``interrupt``, after cancelling its
    conversation's turn in flight, in the same transaction); or the id of the turn the
    idempotency key already belongs to (nothing written then)."""
    settings = get_settings()
    try:
        with direct_connection() as conn:
            interrupted = None
            with conn.transaction() if interrupt else nullcontext():
                if interrupt:
                    interrupted = interrupt_active_turn(
                        conn,
                        tenant_id=tenant,
                        conversation=conversation,
                        reason=interrupt_reason(turn_id),
                    )
                accepted = accept_turn(
                    conn,
                    turn_id=turn_id,
                    tenant_id=tenant,
                    conversation=conversation,
                    message=message,
                    topology=topology,
                    idempotency_key=key,
                    accepted_at=time.time(),
                    stage_deadline_s=settings.turn.stage_deadline_s,
                    reject_when_busy=reject_when_busy,
                    held=held,
                    interrupted=interrupted,
                )
            return _Accepted(accepted, interrupted)
    except psycopg.errors.UniqueViolation as exc:
        if key is None or not is_idempotency_conflict(exc):
            raise
        # The key was used before (or by a concurrent call that won): nothing was written.
        earlier = _earlier_turn(tenant, key, conversation=conversation, message=message)
        assert earlier is not None
        return earlier
    except InvalidInput:  # refused: the conversation is busy, unless this key was its turn
        earlier = (
            _earlier_turn(tenant, key, conversation=conversation, message=message)
            if key is not None
            else None
        )
        if earlier is None:
            raise
        return earlier
    except psycopg.errors.ForeignKeyViolation:  # the tenant was deleted a moment ago
        recent_tenant_settings.forget(tenant)
        raise UnknownTenant(tenant) from None


def _earlier_turn(tenant: str, key: str, *, conversation: str, message: str) -> str | None:
    """The id of the turn this key belongs to, if any; IdempotencyConflict when that turn
    was accepted for another conversation or message (a caller's bug would otherwise lose
    this message without a word)."""
    with session_scope() as session:
        earlier = find_by_idempotency_key(session, tenant_id=tenant, key=key)
    if earlier is None:
        return None
    differs = earlier.differences(conversation=conversation, message=message)
    if differs:
        raise IdempotencyConflict(key, turn_id=earlier.turn_id, differs=differs)
    return earlier.turn_id


def get_turn(turn_id: str) -> TurnView:
    """The turn as it is now; TurnNotFound, or DatabaseUnavailable (transient)."""
    turn_id = check_turn_id(turn_id)
    with transient_database_failures(), session_scope() as session:
        turn = load_turn(session, turn_id)
        return TurnView(
            id=str(turn.id),
            tenant_id=turn.tenant_id,
            conversation_id=str(turn.conversation_id),
            seq=turn.seq,
            status=turn.status,
            topology=turn.topology,
            message=turn.message,
            carried_message=turn.carried_message,
            phase=turn.phase,
            intent=turn.intent,
            proposed_agent=turn.proposed_agent,
            confidence=turn.confidence,
            kb_information_level=turn.kb_information_level,
            next_agent=turn.next_agent,
            routing_reason=turn.routing_reason,
            agent_response=turn.agent_response,
            agent_fallback=turn.agent_fallback,
            agent_note=turn.agent_note,
            failure_reason=turn.failure_reason,
            accepted_at=turn.accepted_at,
            completed_at=turn.completed_at,
            usage=dict(turn.usage),
        )


def wait_for_turn(
    turn_id: str, timeout: float = 30.0, *, raise_on_failure: bool = False
) -> TurnView:
    """Block until the turn has ended (completed or failed), or raise TurnTimeout.

    Follows the turn's stream in Redis and checks Postgres, the source of truth, when the
    stream announces the end or has been quiet for a second: a lost Redis entry can delay
    it by at most a second but never hang it, and reply tokens cost no queries.
    """
    deadline = time.monotonic() + timeout
    cursor = "0"
    while True:
        view = get_turn(turn_id)
        if view.ended:
            if raise_on_failure and view.status == TurnStatus.FAILED.value:
                raise TurnFailed(f"turn {turn_id} failed: {view.failure_reason}")
            return view
        if time.monotonic() >= deadline:
            raise TurnTimeout(f"turn {turn_id} is still {view.status} after {timeout:.1f} s")
        cursor = _until_end_or_quiet(turn_id, after=cursor, deadline=deadline)


def _until_end_or_quiet(turn_id: str, *, after: str, deadline: float) -> str:
    """Read the turn's stream until its end entry, a quiet second, or the deadline; returns
    the id of the last entry read."""
    cursor = after
    while (remaining := deadline - time.monotonic()) > 0:
        events = read_events(
            turn_id, after=cursor, block_ms=max(1, int(min(remaining, 1.0) * 1000))
        )
        if not events:
            break
        cursor = events[-1].id
        if any(event.kind == "end" for event in events):
            break
    return cursor


def stream_turn(turn_id: str, *, after: str = "0", timeout: float = 60.0) -> Iterator[StreamEvent]:
    """The reply's tokens as the agent produces them, then an ``end`` event.

    Raises TurnNotFound at once (not when iterated) for a turn id Postgres does not know; a
    known turn whose stream has not started yet is waited for, up to ``timeout``.
    Resume after a disconnect by passing the id of the last event seen as ``after``.
    A ``restart`` event means the agent re-ran: discard the text shown so far. A ``cancel``
    event (its ``reason`` says which later turn interrupted it) comes before the ``end`` of a
    cancelled turn, whose reply, if any was shown, is void. The reply of record is
    ``get_turn(turn_id).agent_response`` once the ``end`` event has come.
    """
    turn_id = check_turn_id(turn_id)
    with transient_database_failures(), direct_connection() as conn:
        known = turn_exists(conn, turn_id)
    if not known:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    return follow(turn_id, after=after, timeout_s=timeout)
