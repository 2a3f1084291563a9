"""The merge stage: the chord callback. Routes the turn, knowing what the KB holds.

Both header stages return the output they committed to Postgres (or the one another
delivery committed first), and the chord hands those to the merge: it routes from them
without reading the turn, and its one conditional UPDATE decides whether this run routes
it. A merge without them (re-driven by the sweeper after a lost chord, the kb_first chain)
reads both outputs from Postgres, the system of record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.config import get_settings
from shared.contract import OrchestratorResult, ResearcherResult, from_wire
from shared.errors import InvalidInput, StageConflict
from shared.schemas import (
    TERMINAL_STATUSES,
    Agent,
    Orchestration,
    RoutingDecision,
    Stage,
    Topology,
    TurnStatus,
)
from shared.turn.orchestrator import stored_orchestration
from shared.turn.researcher import stored_research
from shared.turn.routing import route_turn
from shared.turn.stage import StageOrigin, commit_stage_output, read_turn, start_span

Routed = tuple[RoutingDecision, bool]  # the decision, and whether the agent retrieves itself


def run_merge(
    turn_id: str, origin: StageOrigin, header_outputs: Sequence[Any] = ()
) -> Routed | None:
    """Route the turn in one UPDATE. Returns the decision and whether the agent does its own
    retrieval, or None when the turn has already ended."""
    span = start_span(turn_id, Stage.MERGE, origin)
    outputs = outputs_from_headers(header_outputs)
    if outputs is None:
        return _route_from_row(turn_id, span)
    decision = route_turn(*outputs)
    if _write_route(turn_id, decision, span):
        return decision, False  # a chord runs only in the parallel topology
    return _after_refused_write(turn_id)


def outputs_from_headers(
    results: Sequence[Any],
) -> tuple[Orchestration, ResearcherResult] | None:
    """The orchestration and the research the chord's header tasks returned (as
    shared/contract.py's ``to_wire`` made them), or None when they are not both there (the
    merge then reads them from the turn's row). Each is validated once, here."""
    orchestration = research = None
    for wire in results if isinstance(results, list | tuple) else ():
        try:
            output = from_wire(wire, (OrchestratorResult, ResearcherResult))
        except InvalidInput:
            return None
        if isinstance(output, OrchestratorResult):
            orchestration = output.orchestration
        elif isinstance(output, ResearcherResult):
            research = output  # what routing reads of the research
    return (orchestration, research) if orchestration and research else None


def _write_route(turn_id: str, decision: RoutingDecision, span: Any) -> bool:
    values = {
        "next_agent": decision.next_agent.value,
        "routing_reason": decision.routing_reason,
        "routed_at": time.time(),
        "status": TurnStatus.ROUTED.value,
        "stage_deadline_at": datetime.now(UTC)
        + timedelta(seconds=get_settings().turn.stage_deadline_s),
    }
    return commit_stage_output(stage=Stage.MERGE, turn_id=turn_id, values=values, span=span)


def _route_from_row(turn_id: str, span: Any) -> Routed | None:
    turn = read_turn(turn_id)
    if turn.status in TERMINAL_STATUSES:
        return None
    sequential = turn.topology == Topology.SEQUENTIAL.value
    if turn.routed_at is not None:  # already routed: a re-delivery; send the agent again
        return _stored_route(turn)
    orchestration = stored_orchestration(turn)
    research = stored_research(turn)
    if orchestration is None or (research is None and not sequential):
        raise StageConflict(f"turn {turn_id} reached the merge without both stage outputs")
    decision = route_turn(orchestration, None if sequential else research)
    if not _write_route(turn_id, decision, span):
        return _after_refused_write(turn_id)
    return decision, sequential


def _after_refused_write(turn_id: str) -> Routed | None:
    """The route was not written: the turn has ended (no agent from this run), or another
    delivery routed it first (a re-delivery: send its agent again)."""
    turn = read_turn(turn_id)
    if turn.status in TERMINAL_STATUSES:
        return None
    return _stored_route(turn)


def _stored_route(turn: Any) -> Routed:
    decision = RoutingDecision(
        next_agent=Agent(turn.next_agent or Agent.ADAPTIVE_RESPONSE.value),
        routing_reason=turn.routing_reason or "",
    )
    return decision, turn.topology == Topology.SEQUENTIAL.value
