"""Turns that Redis lost are re-driven from Postgres; turns that cannot finish end failed.

Delivery is at-least-once, so anything a restart, an eviction or a killed worker lost is
found here by its stage deadline. The sweeper is safe to run on several machines at once:
rows are claimed with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from shared.admission import (
    drop_ended_from_in_flight,
    end_in_redis,
    let_go,
    let_go_safely,
    release,
)
from shared.config import get_settings
from shared.counts import counted
from shared.db.direct import direct_connection
from shared.db.models import Turn
from shared.db.outbox import claim_undispatched
from shared.db.session import session_scope
from shared.db.tenants import recent_tenant_settings
from shared.db.turns import fail_turn, held_turns, release_conversation
from shared.dispatch import publish_agent, publish_committed, publish_merge, publish_turn
from shared.errors import UnknownTenant
from shared.schemas import Admission, Agent, Topology, TurnStatus
from shared.turn.agents import FALLBACK_REPLY
from shared.turn_state import Actor, Table, check_write, sources

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    redriven: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Redrive:
    turn_id: str
    status: str
    topology: str
    next_agent: str | None
    headers_durable: bool  # the merge's inputs are in Postgres: only the merge is missing

    @property
    def stage(self) -> str:
        if self.status == TurnStatus.ROUTED.value:
            return "agent"
        return "merge" if self.headers_durable else "workflow"


def _headers_durable(row: Any) -> bool:
    if row.topology == Topology.SEQUENTIAL.value:  # no researcher before the route
        return row.orchestrated_at is not None
    return row.orchestrated_at is not None and row.researched_at is not None


@dataclass(frozen=True)
class TurnEnding:
    ended: bool  # this call ended the turn; False when it had already ended
    released: tuple[str, str] | None  # the conversation's next turn (id, topology), if any


def end_turn_failed(turn_id: str, reason: str, *, actor: Actor) -> TurnEnding:
    """Fail a turn with a reason and the fallback reply, unless it has already ended (or is
    in no status ``actor`` may fail a turn in: shared/turn_state.py)."""
    with session_scope() as session:
        turn = fail_turn(
            session, actor=actor, turn_id=turn_id, reason=reason, fallback_reply=FALLBACK_REPLY
        )
        released = None
        if turn is not None:
            next_id = release_conversation(
                session,
                turn_id=turn_id,
                conversation_id=turn.conversation_id,
                stage_deadline_s=get_settings().turn.stage_deadline_s,
            )
            if next_id:
                released = (next_id, turn.topology)
    if turn is not None:
        log.error(
            "turn failed",
            extra={
                "action": "turn_failed",
                "turn_id": turn_id,
                "tenant_id": turn.tenant_id,
                "reason": reason,
            },
        )
        policy = _admission_of(turn.tenant_id)
        let_go_safely(
            turn.tenant_id,
            end_in_redis(turn_id, TurnStatus.FAILED.value, tenant=turn.tenant_id, policy=policy),
        )
    return TurnEnding(ended=turn is not None, released=released)


def _admission_of(tenant_id: str) -> Admission:
    try:
        return recent_tenant_settings.get(tenant_id).admission
    except UnknownTenant:  # deleted meanwhile: nothing of it to release
        return Admission(max_in_flight=None, turns_per_s=None)


@dataclass
class HeldReport:
    released: int = 0  # held turns let go
    expired: list[str] = field(default_factory=list)  # held too long: failed


def release_held_turns() -> HeldReport:
    """The relay's share of admission: every tenant's held turns, as Postgres has them.

    A turn held longer than its tenant's ``admission.hold_max_s`` ends failed with the
    reason. The others are handed to the tenant's release script with the held set, which
    follows Postgres (a held turn Redis lost is held again; one it admitted before a crash
    is promoted now), admitting the oldest ones that fit. In-flight entries of turns that
    have ended in Postgres are dropped first, so a lost release cannot keep turns held.
    """
    report = HeldReport()
    with direct_connection() as conn:
        held = held_turns(conn)
    now = time.time()
    for tenant_id, turns in held.items():
        policy = _admission_of(tenant_id)
        waiting = []
        for turn_id, accepted_at in turns:
            if now - accepted_at > policy.hold_max_s:
                reason = (
                    f"held {now - accepted_at:.0f} s over tenant {tenant_id}'s admission "
                    f"limits, longer than admission.hold_max_s ({policy.hold_max_s:g} s); "
                    "never dispatched"
                )
                if end_turn_failed(turn_id, reason, actor=Actor.ADMISSION).ended:
                    report.expired.append(turn_id)
            else:
                waiting.append((turn_id, accepted_at))
        if not waiting:
            continue
        try:
            drop_ended_from_in_flight(tenant_id)
            released = release(tenant_id, policy, held=waiting)
            let_go(tenant_id, released)
        except Exception as exc:  # this tenant's turns wait for the next relay; not the others'
            log.warning(
                "held turns not let go",
                extra={
                    "action": "held_release_failed",
                    "tenant_id": tenant_id,
                    "reason": type(exc).__name__,
                },
            )
            continue
        report.released += len(released.promoted)
    return report


# What the sweeper watches: turns whose workflow was dispatched, each with a stage deadline
# (the statuses it may fail a turn from, as ix_turns_open_by_deadline holds them).
_STUCK = sorted(sources(Actor.SWEEPER, TurnStatus.FAILED))


def _claim_stuck(limit: int) -> tuple[list[_Redrive], list[tuple[str, str]]]:
    settings = get_settings().turn
    now = datetime.now(UTC)
    redrives: list[_Redrive] = []
    exhausted: list[tuple[str, str]] = []
    with session_scope() as session:
        rows = session.execute(
            select(
                Turn.id,
                Turn.status,
                Turn.topology,
                Turn.attempts,
                Turn.next_agent,
                Turn.orchestrated_at,
                Turn.researched_at,
            )
            .where(Turn.status.in_(_STUCK), Turn.stage_deadline_at < now)
            .order_by(Turn.stage_deadline_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            if row.attempts + 1 >= settings.max_attempts:
                exhausted.append(
                    (
                        str(row.id),
                        f"stuck in {row.status} after {counted(row.attempts + 1, 'attempt')}",
                    )
                )
                continue
            redrive = {
                "attempts": Turn.attempts + 1,
                "stage_deadline_at": now + timedelta(seconds=settings.stage_deadline_s),
            }
            check_write(Actor.SWEEPER, Table.TURNS, redrive.keys())
            session.execute(update(Turn).where(Turn.id == row.id).values(redrive))
            redrives.append(
                _Redrive(
                    str(row.id), row.status, row.topology, row.next_agent, _headers_durable(row)
                )
            )
    return redrives, exhausted


def sweep_stuck_turns(limit: int = 200) -> SweepReport:
    """Re-drive turns past their stage deadline from their last durable stage."""
    report = SweepReport()
    redrives, exhausted = _claim_stuck(limit)
    for turn_id, reason in exhausted:
        ending = end_turn_failed(turn_id, reason, actor=Actor.SWEEPER)
        if ending.ended:  # another sweeper, or the turn's own agent, may have ended it
            report.failed.append(turn_id)
        if ending.released:
            report.released.append(ending.released)
    for item in redrives:
        try:
            _redrive(item)
            report.redriven.append(item.turn_id)
            log.warning(
                "turn re-driven",
                extra={"action": "turn_redriven", "turn_id": item.turn_id, "stage": item.stage},
            )
        except Exception as exc:  # broker down: the next sweep tries again
            log.warning(
                "re-drive failed",
                extra={
                    "action": "redrive_failed",
                    "turn_id": item.turn_id,
                    "reason": type(exc).__name__,
                },
            )
    publish_committed(report.released)
    return report


def _redrive(item: _Redrive) -> None:
    """Publish the turn again from its last durable stage."""
    if item.status == TurnStatus.ROUTED.value and item.next_agent:
        publish_agent(
            item.turn_id,
            Agent(item.next_agent),
            retrieve=item.topology == Topology.SEQUENTIAL.value,
        )
    elif item.headers_durable:
        # Both header outputs are durable, the route is not: the chord's callback was lost
        # (a lost counter, a flushed result backend). Publish the merge alone, without
        # depending on chord state again.
        publish_merge(item.turn_id)
    else:  # header stages whose output is already durable return it without running again
        publish_turn(item.turn_id, item.topology)


def relay_outbox(*, older_than_s: float = 3.0, limit: int = 500) -> int:
    """Publish dispatch intents that no producer published. Returns how many were sent.

    The rows are marked in the transaction that claimed them; a broker outage ends the pass
    (the next relay tries again), a row that fails alone does not hold back the rest."""
    with session_scope() as session:
        pending = claim_undispatched(session, older_than_s=older_than_s, limit=limit)
        sent = publish_committed(pending, mark=session, stop_at_outage=True)
    return len(sent)
