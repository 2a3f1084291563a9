"""One historical turn, decided again: orchestrator, researcher and routing, no writes.

The stages are the live ones (the chat model's ``orchestrate``, ``research_question``,
``route_turn``), called with the run's effective settings, the current knowledge base and
the conversation as it was before the turn. A stage the run does not re-score keeps the
turn's stored output. A provider failure ends as it would live: the orchestrator's default
route, or a MISSING research marked failed, and the result's note says so.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.config import get_settings
from shared.db.models import Turn
from shared.db.turns import stage_message
from shared.errors import ChordlineError
from shared.kb.research import failed_research, gate_skips, research_question, skipped_research
from shared.providers.base import ConversationContext, Usage
from shared.providers.registry import get_providers
from shared.schemas import (
    Orchestration,
    Research,
    RoutingDecision,
    Stage,
    TenantSettings,
    Topology,
)
from shared.turn.orchestrator import failed_orchestration, stored_orchestration
from shared.turn.researcher import stored_research
from shared.turn.routing import route_turn

MAX_HITS_KEPT = 3


@dataclass(frozen=True)
class TurnRescore:
    """What the turn would get now, and what deciding it cost."""

    turn_id: uuid.UUID
    orchestration: Orchestration
    research: Research | None
    decision: RoutingDecision
    usage: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)

    def result_values(self, old_agent: str | None) -> dict[str, Any]:
        """The ``new_*`` columns of the turn's result row."""
        research = self.research
        top = max((h.score for h in research.hits), default=None) if research else None
        return {
            "new_phase": self.orchestration.phase.value,
            "new_intent": self.orchestration.intent,
            "new_proposed_agent": self.orchestration.proposed_agent.value,
            "new_confidence": self.orchestration.confidence,
            "new_level": research.kb_information_level.value if research else None,
            "new_top_score": top,
            "new_agent": self.decision.next_agent.value,
            "new_routing_reason": self.decision.routing_reason,
            "new_hits": [
                {"chunk_id": h.chunk_id, "title": h.title, "score": h.score}
                for h in (research.hits[:MAX_HITS_KEPT] if research else [])
            ],
            "routing_changed": self.decision.next_agent.value != old_agent,
            "note": "; ".join(self.notes)[:2000] or None,
            "usage": {stage: counts for stage, counts in self.usage.items() if counts["calls"]},
        }


def stages_to_run(turn: Turn, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """The run's stages, plus any other whose stored output the turn lacks (it never ran)."""
    stored = {
        Stage.ORCHESTRATOR: turn.orchestrated_at is not None,
        Stage.RESEARCHER: turn.researched_at is not None,
    }
    return tuple(s for s in (Stage.ORCHESTRATOR, Stage.RESEARCHER) if s in stages or not stored[s])


def _orchestrate(
    *, context: ConversationContext, settings: TenantSettings, usage: Usage, deadline: float
) -> tuple[Orchestration, str | None]:
    try:
        return get_providers().chat.orchestrate(
            context=context, model=settings.models.orchestrator, usage=usage, deadline=deadline
        ), None
    except ChordlineError as exc:
        failed = failed_orchestration(exc)
        return failed, failed.fallback_reason


def _research(
    *, turn: Turn, settings: TenantSettings, usage: Usage, deadline: float
) -> tuple[Research, str | None]:
    if gate_skips(message=stage_message(turn), tenant_id=turn.tenant_id, settings=settings):
        return skipped_research(), None
    try:
        return research_question(
            tenant_id=turn.tenant_id,
            question=stage_message(turn),
            settings=settings,
            usage=usage,
            deadline=deadline,
        ), None
    except ChordlineError as exc:
        failed = failed_research(exc)
        return failed, failed.reason


def rescore_turn(
    *,
    turn: Turn,
    context: ConversationContext,
    settings: TenantSettings,
    stages: tuple[Stage, ...],
) -> TurnRescore:
    """Decide the turn again. Reads the knowledge base; writes nothing."""
    deadline = time.time() + get_settings().turn.budget_s
    usage = {Stage.ORCHESTRATOR: Usage(), Stage.RESEARCHER: Usage()}
    running = stages_to_run(turn, stages)
    notes = [f"{s.value} re-run: the turn had no stored output" for s in running if s not in stages]
    orchestration = stored_orchestration(turn)
    if Stage.ORCHESTRATOR in running or orchestration is None:
        orchestration, failed = _orchestrate(
            context=context, settings=settings, usage=usage[Stage.ORCHESTRATOR], deadline=deadline
        )
        notes += [failed] if failed else []
    research = stored_research(turn)
    if Stage.RESEARCHER in running or research is None:
        research, failed = _research(
            turn=turn, settings=settings, usage=usage[Stage.RESEARCHER], deadline=deadline
        )
        notes += [failed] if failed else []
    sequential = settings.topology is Topology.SEQUENTIAL
    return TurnRescore(
        turn_id=turn.id,
        orchestration=orchestration,
        research=research,
        decision=route_turn(orchestration, None if sequential else research),
        usage={stage.value: u.as_dict() for stage, u in usage.items()},
        notes=notes,
    )
