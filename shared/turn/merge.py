"""The merge stage: the chord callback. Routes the turn, knowing what the KB holds."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from shared.config import get_settings
from shared.errors import StageConflict
from shared.schemas import Agent, RoutingDecision, Stage, Topology, TurnStatus
from shared.turn.orchestrator import stored_orchestration
from shared.turn.researcher import stored_research
from shared.turn.routing import route_turn
from shared.turn.stage import StageOrigin, commit_stage_output, read_turn, start_span


def run_merge(turn_id: str, origin: StageOrigin) -> tuple[RoutingDecision, bool] | None:
    """Route the turn in one UPDATE. Returns (decision, agent retrieves itself) or None when
    the turn has already ended."""
    span = start_span(turn_id, Stage.MERGE, origin)
    turn = read_turn(turn_id)
    if turn.status in (TurnStatus.COMPLETED.value, TurnStatus.FAILED.value):
        return None
    sequential = turn.topology == Topology.SEQUENTIAL.value
    if turn.routed_at is not None:  # already routed: a re-delivery; send the agent again
        return RoutingDecision(
            next_agent=Agent(turn.next_agent or Agent.ADAPTIVE_RESPONSE.value),
            routing_reason=turn.routing_reason or "",
        ), sequential
    orchestration = stored_orchestration(turn)
    research = stored_research(turn)
    if orchestration is None or (research is None and not sequential):
        raise StageConflict(f"turn {turn_id} reached the merge without both stage outputs")
    decision = route_turn(orchestration, None if sequential else research)
    values = {
        "next_agent": decision.next_agent.value,
        "routing_reason": decision.routing_reason,
        "routed_at": time.time(),
        "status": TurnStatus.ROUTED.value,
        "stage_deadline_at": datetime.now(UTC)
        + timedelta(seconds=get_settings().turn.stage_deadline_s),
    }
    if not commit_stage_output(stage=Stage.MERGE, turn_id=turn_id, values=values, span=span):
        return None  # the turn ended (or was routed) meanwhile: no agent from this run
    return decision, sequential
