"""The turn store's contract, on Postgres and on the in-memory fake alike: the unit tests
that run stages on the fake (tests/unit/test_stages_in_memory.py) hold on Postgres only if
both stores write the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from shared.db.spans import SpanRecord
from shared.errors import IllegalTransition, OwnershipViolation, TurnNotFound
from shared.schemas import Stage, TurnStatus
from shared.turn.recovery import end_turn_failed
from shared.turn.store import PostgresTurnStore, TurnStore
from shared.turn_state import Actor
from tests.conftest import accept_unpublished_turn
from tests.fakes import InMemoryTurnStore

pytestmark = pytest.mark.integration

MESSAGE = "What does the Business plan cost for 40 people?"
NewTurn = Callable[[], str]


@pytest.fixture(params=["postgres", "in-memory"])
def store_and_turns(
    request: pytest.FixtureRequest, services: None, tenant: str
) -> Iterator[tuple[TurnStore, NewTurn, Callable[[str], None]]]:
    """A store, a way to add an accepted (queued) turn to it, and a way to end one."""
    if request.param == "in-memory":
        fake = InMemoryTurnStore()

        def end_fake(turn_id: str) -> None:
            fake.turns[turn_id].status = TurnStatus.FAILED.value

        yield fake, lambda: fake.add_turn(MESSAGE, tenant=tenant), end_fake
        return
    made: list[str] = []

    def add() -> str:
        made.append(accept_unpublished_turn(tenant, message=MESSAGE))
        return made[-1]

    def end(turn_id: str) -> None:
        end_turn_failed(turn_id, "ended by the test", actor=Actor.SWEEPER)

    yield PostgresTurnStore(), add, end
    for turn_id in made:
        end_turn_failed(turn_id, "test over", actor=Actor.SWEEPER)


def _span(turn_id: str, stage: Stage) -> SpanRecord:
    return SpanRecord(turn_id=turn_id, stage=stage.value, started_at=time.time())


def _route() -> dict[str, object]:
    return {
        "next_agent": "support",
        "routing_reason": "a described problem",
        "routed_at": time.time(),
        "status": TurnStatus.ROUTED.value,
        "stage_deadline_at": datetime.now(UTC),
    }


def test_a_stage_output_is_written_once(
    store_and_turns: tuple[TurnStore, NewTurn, Callable[[str], None]],
) -> None:
    store, add, _ = store_and_turns
    turn_id = add()
    inputs = store.stage_inputs(turn_id)
    assert inputs.turn.status == TurnStatus.QUEUED.value and inputs.context.message == MESSAGE
    assert inputs.turn.orchestrated_at is None
    values = {"phase": "discovery", "intent": "pricing", "orchestrated_at": time.time()}
    span = _span(turn_id, Stage.ORCHESTRATOR)
    assert store.write_output(
        stage=Stage.ORCHESTRATOR, turn_id=turn_id, values=values, span=span, usage={"calls": 1}
    )
    again = {**values, "intent": "something else"}
    assert not store.write_output(
        stage=Stage.ORCHESTRATOR, turn_id=turn_id, values=again, span=span, usage=None
    )
    assert store.turn(turn_id).intent == "pricing"  # the first one stands


def test_the_merge_moves_a_queued_turn_to_routed_once_and_an_ended_one_never(
    store_and_turns: tuple[TurnStore, NewTurn, Callable[[str], None]],
) -> None:
    store, add, end = store_and_turns
    turn_id, ended = add(), add()
    span = _span(turn_id, Stage.MERGE)
    assert store.write_output(
        stage=Stage.MERGE, turn_id=turn_id, values=_route(), span=span, usage=None
    )
    assert store.turn(turn_id).status == TurnStatus.ROUTED.value
    assert not store.write_output(
        stage=Stage.MERGE, turn_id=turn_id, values=_route(), span=span, usage=None
    )
    end(ended)
    assert not store.write_output(
        stage=Stage.MERGE, turn_id=ended, values=_route(), span=span, usage=None
    )
    assert store.turn(ended).status == TurnStatus.FAILED.value


def test_a_write_outside_the_stages_grant_fails_loudly_and_changes_nothing(
    store_and_turns: tuple[TurnStore, NewTurn, Callable[[str], None]],
) -> None:
    store, add, _ = store_and_turns
    turn_id = add()
    span = _span(turn_id, Stage.ORCHESTRATOR)
    with pytest.raises(OwnershipViolation, match="next_agent"):
        store.write_output(
            stage=Stage.ORCHESTRATOR,
            turn_id=turn_id,
            values={"next_agent": "support", "orchestrated_at": time.time()},
            span=span,
            usage=None,
        )
    route = {k: v for k, v in _route().items() if k != "status"}
    with pytest.raises(IllegalTransition):
        store.write_output(stage=Stage.MERGE, turn_id=turn_id, values=route, span=span, usage=None)
    turn = store.turn(turn_id)
    assert turn.next_agent is None and turn.orchestrated_at is None


def test_an_unknown_turn_is_named(
    store_and_turns: tuple[TurnStore, NewTurn, Callable[[str], None]],
) -> None:
    store = store_and_turns[0]
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(TurnNotFound, match=missing):
        store.turn(missing)
    with pytest.raises(TurnNotFound, match=missing):
        store.stage_inputs(missing)
