"""The conversation's memory and qualification have types: memory is read from any stored
document (rows written before it had a type included) and written back in the same shape;
the qualification moves forward only."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from shared.db.turns import TurnRecord
from shared.schemas import Agent, ConversationMemory, Phase, Qualification
from shared.turn.agents import memory_fields_written, next_qualification, updated_memory

# As the agents have always written it (tests/integration/test_conversation_memory.py).
STORED: dict[str, Any] = {
    "turns": 2,
    "last_agent": "technical_consultant",
    "last_phase": "technical_evaluation",
    "last_intent": "integration",
    "topics": ["Overview", "API and integrations > REST API"],
    "furthest_phase": "technical_evaluation",
    "facts": {"sites": 3, "people": 40, "current_tool": "spreadsheets"},
}


@pytest.mark.parametrize(
    "stored",
    [
        STORED,
        {k: v for k, v in STORED.items() if k not in ("furthest_phase", "facts")},
        {**STORED, "last_phase": None, "last_intent": None, "topics": []},
        {**STORED, "sentiment": "keen"},  # a key this version does not know is kept
        {**STORED, "facts": {**STORED["facts"], "fleet_size": 12}},
    ],
)
def test_a_stored_memory_reads_and_writes_back_unchanged(stored: dict[str, Any]) -> None:
    assert ConversationMemory.from_stored(stored).to_stored() == stored


def test_reading_types_the_memory() -> None:
    memory = ConversationMemory.from_stored(STORED)
    assert memory.last_agent is Agent.TECHNICAL_CONSULTANT
    assert memory.furthest_phase is Phase.TECHNICAL_EVALUATION
    assert memory.facts["people"] == 40


def test_a_value_of_the_wrong_type_is_dropped_and_the_rest_kept() -> None:
    memory = ConversationMemory.from_stored(
        {
            "turns": "many",
            "last_agent": "sales",
            "last_phase": "discovery",
            "topics": ["Pricing", 3],
            "facts": {"sites": "three", "people": 40},
            "furthest_phase": "nowhere",
        }
    )
    assert memory.turns == 0 and memory.last_agent is None and memory.furthest_phase is None
    assert memory.last_phase is Phase.DISCOVERY
    assert memory.topics == ["Pricing"]
    assert memory.facts == {"people": 40}


@pytest.mark.parametrize("stored", [{}, None, [], "memory"])
def test_no_memory_is_an_empty_memory(stored: object) -> None:
    assert ConversationMemory.from_stored(stored) == ConversationMemory()


def _turn(message: str, phase: str | None, intent: str = "x") -> TurnRecord:
    return cast(TurnRecord, SimpleNamespace(message=message, phase=phase, intent=intent))


def test_a_turn_moves_the_memory_on_and_keeps_what_it_does_not_know() -> None:
    before = ConversationMemory.from_stored({**STORED, "sentiment": "keen"})
    after = updated_memory(
        before, _turn("Our CFO decides.", "qualification", "pricing"), Agent.DISCOVERY, None
    )
    stored = after.to_stored()
    assert stored["turns"] == 3 and stored["last_agent"] == "discovery"
    assert stored["last_phase"] == "qualification" and stored["last_intent"] == "pricing"
    assert stored["furthest_phase"] == "technical_evaluation"  # never back
    assert stored["facts"]["decision_makers"] == ["CFO"] and stored["facts"]["sites"] == 3
    assert stored["sentiment"] == "keen"
    assert memory_fields_written(before, after) == [
        "memory.facts",
        "memory.last_agent",
        "memory.last_intent",
        "memory.last_phase",
        "memory.turns",
    ]


def test_a_first_turn_writes_what_it_knows() -> None:
    after = updated_memory(ConversationMemory(), _turn("Hi", "opening"), Agent.DISCOVERY, None)
    assert after.to_stored() == {
        "turns": 1,
        "last_agent": "discovery",
        "last_phase": "opening",
        "last_intent": "x",
        "topics": [],
        "furthest_phase": "opening",
    }


@pytest.mark.parametrize("current", list(Qualification))
@pytest.mark.parametrize("phase", [*Phase, None])
def test_the_qualification_moves_forward_only(current: Qualification, phase: str | None) -> None:
    order = list(Qualification)
    moved = next_qualification(current, phase)
    assert isinstance(moved, Qualification)
    assert order.index(moved) >= order.index(current)


def test_the_qualification_each_phase_reaches() -> None:
    reached = {p.value: next_qualification(Qualification.UNKNOWN, p) for p in Phase}
    assert reached == {
        "opening": Qualification.ENGAGED,
        "discovery": Qualification.ENGAGED,
        "qualification": Qualification.QUALIFYING,
        "technical_evaluation": Qualification.EVALUATING,
        "content": Qualification.QUALIFIED,
        "closing": Qualification.QUALIFIED,
        "support": Qualification.CUSTOMER,
        "handoff": Qualification.HANDED_OFF,
    }
