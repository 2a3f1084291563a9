"""What happens after each stage: the next step of the turn's workflow.

Worker tasks call exactly one of these; each runs its stage and publishes what follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.dispatch import publish_agent, publish_committed
from shared.schemas import Agent, Topology
from shared.turn.agents import run_agent
from shared.turn.merge import run_merge
from shared.turn.orchestrator import run_orchestrator
from shared.turn.researcher import run_researcher
from shared.turn.stage import StageOrigin


def orchestrate(turn_id: str, origin: StageOrigin) -> dict[str, object]:
    result, topology = run_orchestrator(turn_id, origin)
    if topology == Topology.SEQUENTIAL.value:
        route(turn_id, origin)  # no researcher ran: route on the orchestrator alone
    return result.model_dump(mode="json")


def research(turn_id: str, origin: StageOrigin) -> dict[str, object]:
    """The researcher's committed output as the merge routes on it (the hits stay in the
    turn's row, where the agent reads them)."""
    result = run_researcher(turn_id, origin)
    return {
        "kb_information_level": result.kb_information_level.value,
        "retrieval_failed": result.retrieval_failed,
        "hits": len(result.hits),
    }


def route(
    turn_id: str, origin: StageOrigin, header_outputs: Sequence[Any] = ()
) -> dict[str, object]:
    routed = run_merge(turn_id, origin, header_outputs)
    if routed is None:
        return {"status": "ended"}
    decision, agent_retrieves = routed
    publish_agent(turn_id, decision.next_agent, retrieve=agent_retrieves)
    return decision.model_dump(mode="json")


def answer(turn_id: str, *, agent: Agent, retrieve: bool, origin: StageOrigin) -> dict[str, object]:
    completion = run_agent(turn_id, agent=agent, retrieve=retrieve, origin=origin)
    next_turn = None
    if completion.next_turn is not None:
        # Started now. Its outbox row was committed with this turn's reply, so if the
        # broker is down the relay publishes it: this turn is done either way, and
        # retrying its agent task would only find it ended.
        publish_committed([completion.next_turn])
        next_turn = completion.next_turn[0]
    return {"agent": agent.value, "ended": completion.ended, "next_turn": next_turn}
