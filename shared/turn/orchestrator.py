"""The orchestrator stage: which phase is this conversation in, and who should answer."""

from __future__ import annotations

import logging
import time

from shared.db.turns import TurnRecord
from shared.errors import ChordlineError
from shared.providers.base import Usage
from shared.providers.registry import get_providers
from shared.schemas import Agent, Orchestration, Phase, Stage, TurnStatus
from shared.turn.stage import (
    CANCELLED_NOTE,
    StageOrigin,
    commit_stage_output,
    ensure_budget_left,
    load_stage_inputs,
    log_fallback,
    read_turn,
    start_span,
)

log = logging.getLogger(__name__)


def stored_orchestration(turn: TurnRecord) -> Orchestration | None:
    if turn.orchestrated_at is None:
        return None
    return Orchestration(
        phase=Phase(turn.phase or Phase.DISCOVERY.value),
        intent=turn.intent or "",
        confidence=turn.confidence or 0.0,
        proposed_agent=Agent(turn.proposed_agent or Agent.ADAPTIVE_RESPONSE.value),
        handoff=bool(turn.handoff),
        fallback_reason=turn.orchestration_note,
    )


def default_route(reason: str) -> Orchestration:
    """The safe route when the orchestrator cannot answer: ask, never guess."""
    return Orchestration(
        phase=Phase.DISCOVERY,
        intent="fallback",
        confidence=0.0,
        proposed_agent=Agent.ADAPTIVE_RESPONSE,
        fallback_reason=reason[:500],
    )


def failed_orchestration(exc: Exception) -> Orchestration:
    """The orchestrator's model failed: the default route, saying why."""
    return default_route(f"orchestrator failed over to the default route: {exc}")


def run_orchestrator(turn_id: str, origin: StageOrigin) -> tuple[Orchestration, str]:
    """The turn's orchestration (run now, or as stored by an earlier delivery) and topology."""
    span = start_span(turn_id, Stage.ORCHESTRATOR, origin)
    inputs = load_stage_inputs(turn_id)
    topology = inputs.turn.topology
    stored = stored_orchestration(inputs.turn)
    if stored is not None:
        return stored, topology
    if inputs.turn.status == TurnStatus.CANCELLED.value:  # interrupted: no model is called
        return default_route(CANCELLED_NOTE), topology
    usage = Usage()
    try:
        ensure_budget_left(inputs.deadline, Stage.ORCHESTRATOR)
        result = get_providers().chat.orchestrate(
            context=inputs.context,
            model=inputs.settings.models.orchestrator,
            usage=usage,
            deadline=inputs.deadline,
        )
        outcome = "ok"
    except ChordlineError as exc:
        result = failed_orchestration(exc)
        outcome = "fallback"
        log_fallback(Stage.ORCHESTRATOR, turn=inputs.turn, exc=exc)
    values = {
        "phase": result.phase.value,
        "intent": result.intent,
        "proposed_agent": result.proposed_agent.value,
        "confidence": result.confidence,
        "handoff": result.handoff,
        "orchestration_note": result.fallback_reason,
        "orchestrated_at": time.time(),
    }
    if commit_stage_output(
        stage=Stage.ORCHESTRATOR,
        turn_id=turn_id,
        values=values,
        span=span,
        usage=usage,
        outcome=outcome,
    ):
        return result, topology
    stored = stored_orchestration(read_turn(turn_id))
    assert stored is not None  # another delivery wrote first; its answer stands
    return stored, topology
