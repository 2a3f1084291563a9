"""What happens after each stage: the next step of the turn's workflow.

Worker tasks call exactly one of these; each runs its stage, publishes what follows, and
returns its typed result (shared/contract.py), which the task hands to Celery as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.contract import (
    AgentResult,
    MergeResult,
    OrchestratorResult,
    ResearcherResult,
    TurnEnded,
)
from shared.dispatch import publish_agent, publish_committed
from shared.schemas import Agent, Topology
from shared.turn.agents import run_agent
from shared.turn.merge import run_merge
from shared.turn.orchestrator import run_orchestrator
from shared.turn.researcher import run_researcher
from shared.turn.stage import StageOrigin


def orchestrate(turn_id: str, origin: StageOrigin) -> OrchestratorResult:
    result, topology = run_orchestrator(turn_id, origin)
    if topology == Topology.SEQUENTIAL.value:
        route(turn_id, origin)  # no researcher ran: route on the orchestrator alone
    return OrchestratorResult(orchestration=result)


def research(turn_id: str, origin: StageOrigin) -> ResearcherResult:
    """The researcher's committed output as the merge routes on it (the hits stay in the
    turn's row, where the agent reads them)."""
    result = run_researcher(turn_id, origin)
    return ResearcherResult(
        kb_information_level=result.kb_information_level,
        retrieval_failed=result.retrieval_failed,
        hits=len(result.hits),
    )


def route(
    turn_id: str, origin: StageOrigin, header_outputs: Sequence[Any] = ()
) -> MergeResult | TurnEnded:
    routed = run_merge(turn_id, origin, header_outputs)
    if routed is None:
        return TurnEnded()
    decision, agent_retrieves = routed
    publish_agent(turn_id, decision.next_agent, retrieve=agent_retrieves)
    return MergeResult(next_agent=decision.next_agent, routing_reason=decision.routing_reason)


def answer(turn_id: str, *, agent: Agent, retrieve: bool, origin: StageOrigin) -> AgentResult:
    completion = run_agent(turn_id, agent=agent, retrieve=retrieve, origin=origin)
    next_turn = None
    if completion.next_turn is not None:
        # Started now. Its outbox row was committed with this turn's reply, so if the
        # broker is down the relay publishes it: this turn is done either way, and
        # retrying its agent task would only find it ended.
        publish_committed([completion.next_turn])
        next_turn = completion.next_turn[0]
    return AgentResult(agent=agent, ended=completion.ended, next_turn=next_turn)
