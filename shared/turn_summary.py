"""One turn as a person asks about it (`chordline turn show`): its reply, how it was routed,
the conversation memory its agent wrote, and when each stage finished."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Turn
from shared.db.turns import load_turn
from shared.rescoring.context import contexts_before, memory_left_by
from shared.schemas import TurnStatus
from shared.validation import check_turn_id

# Each stage's end, in the order a parallel turn reaches them.
MILESTONES = (
    ("released", "released_at"),  # a turn held over its tenant's admission limits let go
    ("orchestrated", "orchestrated_at"),
    ("researched", "researched_at"),
    ("routed", "routed_at"),
    ("completed", "completed_at"),
)


@dataclass(frozen=True)
class TurnSummary:
    id: str
    tenant_id: str
    conversation: str  # the id the caller gave it
    seq: int
    status: str
    topology: str
    message: str
    carried_message: str | None  # the messages of the turns this one interrupted
    phase: str | None
    proposed_agent: str | None
    agent: str | None
    kb_information_level: str | None
    routing_reason: str | None
    reply: str | None
    agent_fallback: bool | None
    failure_reason: str | None
    memory_written: dict[str, object] | None  # None: no agent committed a reply
    accepted_at: str  # ISO time, UTC
    timings_ms: dict[str, float | None]  # milliseconds after acceptance; None: not reached

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_written(session: Session, turn: Turn) -> dict[str, object] | None:
    """The conversation memory as this turn's agent left it: as the turn stored it, or, for
    a turn completed before turns kept it, the memory before the turn (replayed from the
    conversation's earlier turns) moved on by the same function the agent applied when it
    committed. None for a turn no agent completed."""
    if turn.status != TurnStatus.COMPLETED.value or not turn.next_agent:
        return None
    if turn.memory_after is not None:
        return dict(turn.memory_after)
    return memory_left_by(turn, contexts_before(session, [turn])[turn.id].memory).to_stored()


def _timings_ms(turn: Turn) -> dict[str, float | None]:
    timings: dict[str, float | None] = {}
    for name, column in MILESTONES:
        at: float | None = getattr(turn, column)
        timings[name] = None if at is None else round((at - turn.accepted_at) * 1000, 1)
    return timings


def summarise_turn(session: Session, turn_id: str) -> TurnSummary:
    """The turn's summary; InvalidInput for a malformed id, TurnNotFound for an unknown one."""
    turn = load_turn(session, check_turn_id(turn_id, field="turn id"))
    conversation = session.scalar(
        select(Conversation.external_id).where(Conversation.id == turn.conversation_id)
    )
    return TurnSummary(
        id=str(turn.id),
        tenant_id=turn.tenant_id,
        conversation=conversation or str(turn.conversation_id),
        seq=turn.seq,
        status=turn.status,
        topology=turn.topology,
        message=turn.message,
        carried_message=turn.carried_message,
        phase=turn.phase,
        proposed_agent=turn.proposed_agent,
        agent=turn.next_agent,
        kb_information_level=turn.kb_information_level,
        routing_reason=turn.routing_reason,
        reply=turn.agent_response,
        agent_fallback=turn.agent_fallback,
        failure_reason=turn.failure_reason,
        memory_written=memory_written(session, turn),
        accepted_at=datetime.fromtimestamp(turn.accepted_at, UTC).isoformat(),
        timings_ms=_timings_ms(turn),
    )
