"""``chordline kb eval``: how a tenant's knowledge levels and routing hold on labelled
questions that nothing was fitted on.

Each question is asked as the first turn of a new conversation: the researcher's search and
grading with the tenant's thresholds, the orchestrator's proposal from the tenant's chat
model, and the merge's routing rule. The report has the confusion matrix of the levels,
per-class and balanced accuracy, and the routing table (the agent a person would choose
against the agent chordline chose), with the figures the targets are stated in: ACCURATE
recall, the share of MISSING questions sent to a knowledge-bound agent (technical_consultant
or support), and the share of described problems (labelled support) routed to support.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.kb.calibration import LabelledQuestion
from shared.kb.focus import question_focus
from shared.providers.base import ConversationContext, Usage
from shared.providers.registry import get_providers
from shared.schemas import Agent, KbLevel, TenantSettings
from shared.turn.routing import KNOWLEDGE_BOUND, route_turn


@dataclass(frozen=True)
class Evaluated:
    question: str
    level: KbLevel
    predicted_level: KbLevel
    top_score: float
    agent: Agent | None
    routed_agent: Agent
    intent: str
    confidence: float
    proposed_agent: Agent | None = None
    words_not_found: list[str] | None = None  # offline reranker: what the best passage lacked


def evaluate_question(
    item: LabelledQuestion, *, tenant_id: str, settings: TenantSettings
) -> Evaluated:
    """One question through the researcher, the orchestrator and the routing rule."""
    from shared.kb.research import research_question, words_the_best_passage_lacks

    deadline = time.time() + 30
    research = research_question(
        tenant_id=tenant_id,
        question=item.question,
        settings=settings,
        usage=Usage(),
        deadline=deadline,
    )
    orchestration = get_providers().chat.orchestrate(
        context=ConversationContext(tenant_id=tenant_id, message=item.question),
        model=settings.models.orchestrator,
        usage=Usage(),
        deadline=deadline,
    )
    decision = route_turn(orchestration, research)
    return Evaluated(
        question=item.question,
        level=item.level,
        predicted_level=research.kb_information_level,
        top_score=max((h.score for h in research.hits), default=0.0),
        agent=item.agent,
        routed_agent=decision.next_agent,
        intent=orchestration.intent,
        confidence=orchestration.confidence,
        proposed_agent=orchestration.proposed_agent,
        words_not_found=words_the_best_passage_lacks(item.question, research.hits),
    )


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def evaluation_report(results: Sequence[Evaluated]) -> dict[str, Any]:
    """The figures ``kb eval`` prints (and ``--json`` returns)."""
    levels = [level.value for level in KbLevel]
    confusion = {a: {p: 0 for p in levels} for a in levels}
    for r in results:
        confusion[r.level.value][r.predicted_level.value] += 1
    per_class = {
        level: _share(confusion[level][level], sum(confusion[level].values())) for level in levels
    }
    present = [value for value in per_class.values() if value is not None]
    routed = [r for r in results if r.agent is not None]
    agents = [agent.value for agent in Agent]
    routing = {a: {b: 0 for b in agents} for a in agents}
    for r in routed:
        assert r.agent is not None
        routing[r.agent.value][r.routed_agent.value] += 1
    missing = [r for r in results if r.level is KbLevel.MISSING]
    # The orchestrator's own call, where a person chose a specialist (adaptive_response is
    # also the merge's choice when the knowledge base has nothing, whatever was proposed).
    specialist = [r for r in routed if r.agent is not Agent.ADAPTIVE_RESPONSE]
    right = [r.confidence for r in specialist if r.proposed_agent is r.agent]
    wrong = [r.confidence for r in specialist if r.proposed_agent is not r.agent]
    problems = [r for r in routed if r.agent is Agent.SUPPORT]
    return {
        "questions": {level: sum(confusion[level].values()) for level in levels},
        "confusion": confusion,
        "per_class_accuracy": per_class,
        "balanced_accuracy": round(sum(present) / len(present), 3) if present else None,
        "accurate_recall": per_class[KbLevel.ACCURATE.value],
        "routing": routing,
        "routing_accuracy": _share(sum(r.agent is r.routed_agent for r in routed), len(routed)),
        "missing_to_knowledge_bound": _share(
            sum(r.routed_agent in KNOWLEDGE_BOUND for r in missing), len(missing)
        ),
        # does the orchestrator's confidence mean something: higher when its proposal is right
        "proposal_accuracy": _share(len(right), len(specialist)),
        "mean_confidence_right": round(sum(right) / len(right), 3) if right else None,
        "mean_confidence_wrong": round(sum(wrong) / len(wrong), 3) if wrong else None,
        "problems_to_support": _share(
            sum(r.routed_agent is Agent.SUPPORT for r in problems), len(problems)
        ),
        "wrong": [
            {
                "question": r.question,
                "searched_as": question_focus(r.question),
                "level": r.level.value,
                "predicted_level": r.predicted_level.value,
                "top_score": r.top_score,
                "agent": r.agent.value if r.agent else None,
                "routed_agent": r.routed_agent.value,
                "intent": r.intent,
                "confidence": r.confidence,
                "words_not_found": r.words_not_found,
            }
            for r in results
            if r.level is not r.predicted_level or (r.agent and r.agent is not r.routed_agent)
        ],
    }
