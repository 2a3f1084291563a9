"""The orchestrator's and the merge's logic, run on an in-memory turn store (tests/fakes.py)
with the offline providers: no Postgres, no Redis, no worker. What these show holds on
Postgres too: tests/integration/test_turn_store_contract.py runs the store's cases on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from shared.contract import OrchestratorResult, ResearcherResult, to_wire
from shared.providers.base import ConversationContext, ReplyRequest, Usage
from shared.providers.registry import PROVIDERS, get_providers
from shared.runtime import runtime
from shared.schemas import Agent, KbLevel, Orchestration, Stage, TurnStatus
from shared.turn.merge import run_merge
from shared.turn.orchestrator import run_orchestrator
from shared.turn.stage import CANCELLED_NOTE, StageOrigin
from tests.fakes import InMemoryTurnStore, installed_turn_store

ORIGIN = StageOrigin(queue="test")
PROBLEM = "Since this morning the app keeps showing Sync pending and nothing uploads."


@pytest.fixture
def store() -> Iterator[InMemoryTurnStore]:
    with installed_turn_store() as store:
        yield store


class NoModel:
    """A chat model that must not be called."""

    name = "no-model"

    def orchestrate(
        self, *, context: ConversationContext, model: str, usage: Usage, deadline: float
    ) -> Orchestration:
        raise AssertionError("the model was called")

    def stream_reply(self, *, request: ReplyRequest, usage: Usage, deadline: float) -> Any:
        raise AssertionError("the model was called")


@pytest.fixture
def no_model() -> Iterator[None]:
    runtime().install(PROVIDERS, replace(get_providers(), chat=NoModel()))
    try:
        yield
    finally:
        runtime().discard(PROVIDERS)


def _spans(store: InMemoryTurnStore, stage: Stage) -> int:
    return sum(span.stage == stage.value for span in store.spans)


def test_the_orchestrator_writes_its_answer_once_and_a_redelivery_gets_the_same(
    store: InMemoryTurnStore,
) -> None:
    turn_id = store.add_turn(PROBLEM)
    first, topology = run_orchestrator(turn_id, ORIGIN)
    assert topology == "parallel"
    turn = store.turn(turn_id)
    assert turn.orchestrated_at is not None
    assert (turn.phase, turn.proposed_agent) == (first.phase.value, first.proposed_agent.value)
    assert first.proposed_agent is Agent.SUPPORT  # a described problem is a support turn
    again, _ = run_orchestrator(turn_id, ORIGIN)  # a redelivery of the task
    assert again == first
    assert _spans(store, Stage.ORCHESTRATOR) == 1  # written once


def test_a_cancelled_turn_gets_the_default_route_without_a_model_call(
    store: InMemoryTurnStore, no_model: None
) -> None:
    turn_id = store.add_turn(PROBLEM, status=TurnStatus.CANCELLED)
    result, _ = run_orchestrator(turn_id, ORIGIN)
    assert result.proposed_agent is Agent.ADAPTIVE_RESPONSE
    assert result.fallback_reason == CANCELLED_NOTE
    assert store.turn(turn_id).orchestrated_at is None  # nothing written for it


def _header_outputs(orchestration: Orchestration, level: KbLevel) -> list[dict[str, Any]]:
    return [
        to_wire(OrchestratorResult(orchestration=orchestration)),
        to_wire(ResearcherResult(kb_information_level=level, retrieval_failed=False, hits=0)),
    ]


def test_the_merge_routes_on_what_the_chord_hands_it_and_moves_the_turn_to_routed(
    store: InMemoryTurnStore,
) -> None:
    turn_id = store.add_turn(PROBLEM)
    orchestration, _ = run_orchestrator(turn_id, ORIGIN)
    routed = run_merge(turn_id, ORIGIN, _header_outputs(orchestration, KbLevel.ACCURATE))
    assert routed is not None
    decision, agent_retrieves = routed
    assert decision.next_agent is Agent.SUPPORT and not agent_retrieves
    turn = store.turn(turn_id)
    assert turn.status == TurnStatus.ROUTED.value
    assert (turn.next_agent, turn.routing_reason) == (
        decision.next_agent.value,
        decision.routing_reason,
    )
    # A redelivered merge sends the same agent again and writes nothing.
    again = run_merge(turn_id, ORIGIN, _header_outputs(orchestration, KbLevel.ACCURATE))
    assert again is not None and again[0] == decision
    assert _spans(store, Stage.MERGE) == 1


def test_the_merge_knows_the_knowledge_base_has_nothing(store: InMemoryTurnStore) -> None:
    turn_id = store.add_turn("Do you integrate with the Xero accounting package?")
    orchestration, _ = run_orchestrator(turn_id, ORIGIN)
    wanted = orchestration.model_copy(update={"proposed_agent": Agent.TECHNICAL_CONSULTANT})
    routed = run_merge(turn_id, ORIGIN, _header_outputs(wanted, KbLevel.MISSING))
    assert routed is not None
    assert routed[0].next_agent is not Agent.TECHNICAL_CONSULTANT  # nothing to consult on
    assert "MISSING" in routed[0].routing_reason


@pytest.mark.parametrize("ended", [TurnStatus.CANCELLED, TurnStatus.FAILED])
def test_a_merge_of_an_ended_turn_sends_no_agent_and_writes_nothing(
    store: InMemoryTurnStore, ended: TurnStatus
) -> None:
    turn_id = store.add_turn(PROBLEM)
    orchestration, _ = run_orchestrator(turn_id, ORIGIN)
    store.turns[turn_id].status = ended.value  # ended meanwhile (interrupted, swept)
    assert run_merge(turn_id, ORIGIN, _header_outputs(orchestration, KbLevel.PARTIAL)) is None
    turn = store.turn(turn_id)
    assert turn.status == ended.value and turn.routed_at is None
    assert _spans(store, Stage.MERGE) == 0
