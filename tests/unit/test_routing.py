from __future__ import annotations

import pytest

from shared.schemas import Agent, KbLevel, Orchestration, Phase, Research
from shared.turn.routing import route_turn


def orch(
    agent: Agent, *, confidence: float = 0.8, handoff: bool = False, intent: str = "x"
) -> Orchestration:
    return Orchestration(
        phase=Phase.DISCOVERY,
        intent=intent,
        proposed_agent=agent,
        confidence=confidence,
        handoff=handoff,
    )


def research(level: KbLevel, *, failed: bool = False) -> Research:
    return Research(hits=[], kb_information_level=level, retrieval_failed=failed)


@pytest.mark.parametrize("agent", [Agent.TECHNICAL_CONSULTANT, Agent.SUPPORT])
def test_knowledge_bound_agent_with_missing_kb_goes_to_adaptive_response(agent: Agent) -> None:
    decision = route_turn(orch(agent), research(KbLevel.MISSING))
    assert decision.next_agent is Agent.ADAPTIVE_RESPONSE
    assert "MISSING" in decision.routing_reason


@pytest.mark.parametrize("level", [KbLevel.ACCURATE, KbLevel.PARTIAL])
def test_knowledge_bound_agent_keeps_the_turn_when_kb_covers_it(level: KbLevel) -> None:
    decision = route_turn(orch(Agent.TECHNICAL_CONSULTANT), research(level))
    assert decision.next_agent is Agent.TECHNICAL_CONSULTANT
    assert level.value in decision.routing_reason


def test_discovery_is_not_bound_to_the_knowledge_base() -> None:
    assert (
        route_turn(orch(Agent.DISCOVERY), research(KbLevel.MISSING)).next_agent is Agent.DISCOVERY
    )


def test_handoff_wins_over_everything() -> None:
    decision = route_turn(orch(Agent.SUPPORT, handoff=True), research(KbLevel.ACCURATE))
    assert decision.next_agent is Agent.ADAPTIVE_RESPONSE
    assert "handoff" in decision.routing_reason


def test_low_confidence_asks_instead_of_guessing() -> None:
    decision = route_turn(orch(Agent.CONTENT_GENERATOR, confidence=0.2), research(KbLevel.ACCURATE))
    assert decision.next_agent is Agent.ADAPTIVE_RESPONSE


def test_retrieval_failure_is_named_in_the_reason() -> None:
    decision = route_turn(orch(Agent.TECHNICAL_CONSULTANT), research(KbLevel.MISSING, failed=True))
    assert "retrieval failed" in decision.routing_reason


def test_sequential_routes_on_the_orchestrator_alone() -> None:
    decision = route_turn(orch(Agent.TECHNICAL_CONSULTANT), None)
    assert decision.next_agent is Agent.TECHNICAL_CONSULTANT
