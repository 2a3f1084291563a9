"""The merge routes on the outputs the chord hands it, and on the turn's row without them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shared.contract import OrchestratorResult, ResearcherResult, to_wire
from shared.errors import StageConflict
from shared.schemas import Agent, KbLevel, Orchestration
from shared.turn.merge import outputs_from_headers, run_merge
from shared.turn.recovery import end_turn_failed
from shared.turn.stage import StageOrigin, read_turn
from shared.turn_state import Actor
from tests.conftest import accept_unpublished_turn

pytestmark = pytest.mark.integration

ORCHESTRATION = to_wire(
    OrchestratorResult(
        orchestration=Orchestration.model_validate(
            {
                "phase": "technical_evaluation",
                "intent": "integration",
                "proposed_agent": "technical_consultant",
                "confidence": 0.9,
            }
        )
    )
)


@pytest.fixture
def accepted(services: None, tenant: str) -> Iterator[Callable[[], str]]:
    """Accepted turns whose header stages have not written anything, ended after the test
    (a turn left open would count as live load for whatever runs next)."""
    made: list[str] = []

    def make() -> str:
        made.append(accept_unpublished_turn(tenant))
        return made[-1]

    yield make
    for turn_id in made:
        end_turn_failed(turn_id, "test over", actor=Actor.SWEEPER)


def test_the_merge_routes_on_the_header_outputs_without_reading_them_from_the_row(
    accepted: Callable[[], str],
) -> None:
    turn_id = accepted()
    missing = to_wire(ResearcherResult(kb_information_level=KbLevel.MISSING, hits=0))
    # in either order: the chord's results may come in the order the headers finished
    routed = run_merge(turn_id, StageOrigin.here(), [missing, ORCHESTRATION])
    assert routed is not None
    decision, agent_retrieves = routed
    assert decision.next_agent is Agent.ADAPTIVE_RESPONSE  # knowledge-bound, kb MISSING
    assert "MISSING" in decision.routing_reason and agent_retrieves is False
    row = read_turn(turn_id)
    assert (row.status, row.next_agent) == ("routed", "adaptive_response")
    # a second delivery of the merge finds the route written and sends the same agent
    again = run_merge(turn_id, StageOrigin.here(), [ORCHESTRATION, missing])
    assert again is not None and again[0] == decision


def test_without_header_outputs_the_merge_reads_the_row_and_refuses_a_turn_without_them(
    accepted: Callable[[], str],
) -> None:
    turn_id = accepted()
    with pytest.raises(StageConflict, match="without both stage outputs"):
        run_merge(turn_id, StageOrigin.here())


ACCURATE = to_wire(ResearcherResult(kb_information_level=KbLevel.ACCURATE, hits=3))


def _with(wire: dict[str, object], **changes: object) -> dict[str, object]:
    return {**wire, **changes}


@pytest.mark.parametrize(
    "results",
    [
        [],
        [ORCHESTRATION],
        [ACCURATE],
        [ORCHESTRATION, _with(ACCURATE, kb_information_level="SOMEWHAT")],
        [
            _with(
                ORCHESTRATION,
                orchestration={**ORCHESTRATION["orchestration"], "proposed_agent": "oracle"},
            ),
            ACCURATE,
        ],
        # untagged (as results were before they carried their kind): not read
        [ORCHESTRATION["orchestration"], {"kb_information_level": "ACCURATE"}],
        [ORCHESTRATION, _with(ACCURATE, kind="merge")],
        [ORCHESTRATION, "ACCURATE"],
        "not a list",
    ],
)
def test_incomplete_or_invalid_header_outputs_send_the_merge_to_the_row(results: object) -> None:
    assert outputs_from_headers(results) is None  # type: ignore[arg-type]


def test_the_header_outputs_are_read_in_either_order() -> None:
    for results in ([ORCHESTRATION, ACCURATE], [ACCURATE, ORCHESTRATION]):
        outputs = outputs_from_headers(results)
        assert outputs is not None
        orchestration, research = outputs
        assert orchestration.proposed_agent is Agent.TECHNICAL_CONSULTANT
        assert research.kb_information_level is KbLevel.ACCURATE
        assert research.retrieval_failed is False


def test_the_chord_hands_the_header_results_to_the_merge() -> None:
    from celery import Celery, chord

    from shared.contract import MERGE_TASK, turn_workflow
    from shared.schemas import Topology

    turn_id = "5c1e0000-0000-4000-8000-000000000001"
    workflow = turn_workflow(
        Celery(set_as_current=False), turn_id=turn_id, topology=Topology.PARALLEL
    )
    assert isinstance(workflow, chord)
    assert workflow.body.name == MERGE_TASK
    assert not workflow.body.immutable  # an immutable callback would get no results
    assert all(header.immutable for header in workflow.tasks)  # headers take only the id
    assert [header.kwargs for header in workflow.tasks] == [{"turn_id": turn_id}] * 2
