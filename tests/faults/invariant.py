"""The invariant, read from Postgres only: every accepted turn ends exactly once.

Completed: one reply, no reason, exactly one agent write. Failed: one reason, the fallback
reply, no agent write. Cancelled (interrupted by a later message): one reason, no reply, no
agent write. Every stage's output written at most once. Nothing left open.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Turn, TurnSpan
from shared.db.session import session_scope

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Outcome:
    scenario: str
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    worst_end_s: float = 0.0
    violations: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def as_row(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "accepted": self.accepted,
            "completed": self.completed,
            "failed_with_reason": self.failed,
            "cancelled": self.cancelled,
            "lost": self.lost,
            "worst_end_s": round(self.worst_end_s, 2),
            **self.notes,
        }


def recovery_problems(outcome: Outcome, *, meant_to_fail: int, target_s: float) -> list[str]:
    """What a scenario promises beyond ending every turn once: every turn it does not fail on
    purpose completes (a run where every turn "failed with a reason" is not a pass), and every
    turn ends within the recovery target."""
    problems = []
    must_complete = outcome.accepted - meant_to_fail - outcome.cancelled
    if outcome.completed < must_complete:
        cancelled = f", {outcome.cancelled} cancelled" if outcome.cancelled else ""
        problems.append(
            f"{outcome.completed} of {outcome.accepted} turns completed, {must_complete} must "
            f"({meant_to_fail} failed on purpose{cancelled})"
        )
    if outcome.worst_end_s > target_s:
        problems.append(
            f"a turn took {outcome.worst_end_s:.1f} s to end, above the {target_s:g} s target"
        )
    return problems


def _open_count(ids: list[uuid.UUID]) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Turn)
                .where(Turn.id.in_(ids), Turn.status.notin_(TERMINAL))
            )
            or 0
        )


def settle(turn_ids: list[str], *, timeout_s: float) -> None:
    """Wait until every turn has ended, or the deadline passed (Postgres may be restarting)."""
    ids = [uuid.UUID(t) for t in turn_ids]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _open_count(ids) == 0:
                return
        except Exception:  # Postgres is coming back
            pass
        time.sleep(0.5)


def _stage_writes(ids: list[uuid.UUID]) -> dict[tuple[str, str], int]:
    with session_scope() as session:
        rows = session.execute(
            select(TurnSpan.turn_id, TurnSpan.stage, func.count())
            .where(TurnSpan.turn_id.in_(ids))
            .group_by(TurnSpan.turn_id, TurnSpan.stage)
        ).all()
    return {(str(t), stage): int(n) for t, stage, n in rows}


def verify(scenario: str, turn_ids: list[str], *, deadline_s: float) -> Outcome:
    settle(turn_ids, timeout_s=deadline_s)
    ids = [uuid.UUID(t) for t in turn_ids]
    outcome = Outcome(scenario, accepted=len(set(turn_ids)))
    writes = _stage_writes(ids)
    with session_scope() as session:
        turns = session.execute(
            select(
                Turn.id,
                Turn.status,
                Turn.agent_response,
                Turn.failure_reason,
                Turn.accepted_at,
                Turn.completed_at,
                Turn.conversation_id,
            ).where(Turn.id.in_(ids))
        ).all()
        blocked = session.scalar(
            select(func.count())
            .select_from(Conversation)
            .join(Turn, Turn.id == Conversation.active_turn_id)
            .where(Turn.status.in_(TERMINAL))
        )
    if len(turns) != outcome.accepted:
        outcome.violations.append(f"{outcome.accepted - len(turns)} accepted turns have no row")
        outcome.lost += outcome.accepted - len(turns)
    for turn in turns:
        _check_turn(outcome, turn, writes)
    if blocked:
        outcome.violations.append(f"{blocked} conversations still held by a turn that ended")
    return outcome


def _check_turn(
    outcome: Outcome,
    turn: Row[uuid.UUID, str, str | None, str | None, float, float | None, uuid.UUID],
    writes: dict[tuple[str, str], int],
) -> None:
    tid = str(turn.id)
    status = turn.status
    agent_writes = writes.get((tid, "agent"), 0)
    for stage in ("orchestrator", "researcher", "merge", "agent"):
        if writes.get((tid, stage), 0) > 1:
            outcome.violations.append(f"{tid}: {stage} output written {writes[(tid, stage)]} times")
    if status == "completed":
        outcome.completed += 1
        if not turn.agent_response or turn.failure_reason or agent_writes != 1:
            outcome.violations.append(f"{tid}: completed without exactly one reply")
    elif status == "failed":
        outcome.failed += 1
        if not turn.failure_reason or agent_writes != 0:
            outcome.violations.append(f"{tid}: failed without one reason, or with a reply")
    elif status == "cancelled":
        outcome.cancelled += 1
        if not turn.failure_reason or turn.agent_response or agent_writes != 0:
            outcome.violations.append(f"{tid}: cancelled without one reason, or with a reply")
    else:
        outcome.lost += 1
        outcome.violations.append(f"{tid}: still {status}; {_progress(tid)}")
        return
    ended = (turn.completed_at or 0) - turn.accepted_at
    outcome.worst_end_s = max(outcome.worst_end_s, ended)


def _progress(turn_id: str) -> str:
    """How far an open turn got, for the failure message."""
    with session_scope() as session:
        turn = session.get(Turn, uuid.UUID(turn_id))
        if turn is None:
            return "no row"
        return (
            f"attempts={turn.attempts} deadline={turn.stage_deadline_at} "
            f"orchestrated={turn.orchestrated_at is not None} "
            f"researched={turn.researched_at is not None} routed={turn.routed_at is not None} "
            f"now={time.time():.1f} holders={_lock_holders(session, turn_id)}"
        )


def _lock_holders(session: Session, turn_id: str) -> list[str]:
    from sqlalchemy import text

    rows = session.execute(
        text(
            "SELECT a.pid, a.state, a.client_port, left(a.query, 80) FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'transactionid' "
            "OR (l.relation = 'turns'::regclass AND l.granted AND a.state <> 'active')"
        )
    ).all()
    return [" ".join(str(c) for c in row) for row in rows][:5]
