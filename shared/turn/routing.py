"""The knowledge-aware routing rule: proposed agent x kb_information_level x policy.

The merge applies it once both the orchestrator and the researcher have written their
output; every decision carries a reason a person can read in the trace.
"""

from __future__ import annotations

from typing import Protocol

from shared.schemas import Agent, KbLevel, Orchestration, RoutingDecision

KNOWLEDGE_BOUND = frozenset({Agent.TECHNICAL_CONSULTANT, Agent.SUPPORT})
MIN_CONFIDENCE = 0.35


class Coverage(Protocol):
    """What the rule reads of the research: a ``Research``, or the researcher's result as
    the chord hands it to the merge (``ResearcherResult``, shared/contract.py)."""

    @property
    def kb_information_level(self) -> KbLevel: ...

    @property
    def retrieval_failed(self) -> bool: ...


def route_turn(orchestration: Orchestration, research: Coverage | None) -> RoutingDecision:
    proposed = orchestration.proposed_agent
    if orchestration.handoff:
        return RoutingDecision(
            next_agent=Agent.ADAPTIVE_RESPONSE,
            routing_reason="handoff requested: adaptive_response hands over to a person",
        )
    if orchestration.intent == "off_topic":
        return RoutingDecision(
            next_agent=Agent.ADAPTIVE_RESPONSE,
            routing_reason="off_topic: adaptive_response steers back to the product",
        )
    if research is None:
        return RoutingDecision(
            next_agent=proposed,
            routing_reason=f"sequential topology: {proposed.value} as proposed, before retrieval",
        )
    level = research.kb_information_level
    if proposed in KNOWLEDGE_BOUND and level is KbLevel.MISSING:
        why = (
            "retrieval failed"
            if research.retrieval_failed
            else "the knowledge base has nothing on it"
        )
        return RoutingDecision(
            next_agent=Agent.ADAPTIVE_RESPONSE,
            routing_reason=f"{proposed.value} proposed but kb level MISSING ({why}): "
            "adaptive_response offers a follow-up instead of guessing",
        )
    if orchestration.confidence < MIN_CONFIDENCE:
        return RoutingDecision(
            next_agent=Agent.ADAPTIVE_RESPONSE,
            routing_reason=f"orchestrator confidence {orchestration.confidence:.2f} below "
            f"{MIN_CONFIDENCE}: adaptive_response asks a clarifying question",
        )
    return RoutingDecision(
        next_agent=proposed, routing_reason=f"{proposed.value} as proposed; kb level {level.value}"
    )
