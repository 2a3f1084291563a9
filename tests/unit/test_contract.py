"""The wire contract (shared/contract.py): every task's payload typed and checked at the door,
every signature built from it, every result to JSON and back through one pair of functions."""

from __future__ import annotations

import importlib
import json
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.canvas import Signature, chain, chord

from shared import contract
from shared.contract import (
    PAYLOADS,
    RELAY_TASK,
    RESULT_TYPES,
    SWEEP_TASK,
    AgentResult,
    AgentTaskPayload,
    BatchEnd,
    IngestPayload,
    IngestResult,
    MergeResult,
    NoPayload,
    OrchestratorResult,
    RelayResult,
    RescoreBatchPayload,
    RescoreBatchResult,
    ResearcherResult,
    SweepResult,
    TaskResult,
    TurnEnded,
    TurnRef,
    from_wire,
    to_wire,
    validate,
)
from shared.errors import InvalidInput
from shared.schemas import Agent, KbLevel, Orchestration, Phase, Topology

TURN = str(uuid.uuid4())
OTHER = str(uuid.uuid4())


# --------------------------------------------------------------------------- payloads


@pytest.mark.parametrize(
    ("model", "payload", "field"),
    [
        (TurnRef, {}, "turn_id"),
        (TurnRef, {"turn_id": "turn-1"}, "turn_id"),
        (TurnRef, {"turn_id": TURN.upper()}, "turn_id"),
        (TurnRef, {"turn_id": 7}, "turn_id"),
        (TurnRef, {"turn_id": TURN, "message": "hello"}, "message"),  # ids only
        (AgentTaskPayload, {"turn_id": TURN, "retrieve": "maybe"}, "retrieve"),
        (AgentTaskPayload, {"retrieve": True}, "turn_id"),
        (IngestPayload, {"job_id": "x" * 36}, "job_id"),
        (IngestPayload, {"job_id": TURN, "text": "the document"}, "text"),
        (RescoreBatchPayload, {"run_id": TURN, "batch": -1}, "batch"),
        (RescoreBatchPayload, {"run_id": "run", "batch": 0}, "run_id"),
        (RescoreBatchPayload, {"run_id": TURN}, "batch"),
        (NoPayload, {"limit": 10}, "limit"),
    ],
)
def test_a_bad_payload_is_invalid_input_naming_the_field(
    model: type[Any], payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(model, payload)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (TurnRef, {"turn_id": TURN}),
        (AgentTaskPayload, {"turn_id": TURN, "retrieve": True}),
        (AgentTaskPayload, {"turn_id": TURN}),
        (IngestPayload, {"job_id": TURN}),
        (RescoreBatchPayload, {"run_id": TURN, "batch": 3}),
        (NoPayload, {}),
    ],
)
def test_a_good_payload_reads_back_as_it_was_sent(
    model: type[Any], payload: dict[str, Any]
) -> None:
    read = validate(model, payload)
    assert {k: v for k, v in read.model_dump().items() if k in payload} == payload


# --------------------------------------------------------------------------- signatures


def _signatures(app: Celery) -> list[Signature]:
    """Every signature shared/contract.py builds, for every task that has one."""
    parallel, kb_first, sequential = (
        contract.turn_workflow(app, turn_id=TURN, topology=topology)
        for topology in (Topology.PARALLEL, Topology.KB_FIRST, Topology.SEQUENTIAL)
    )
    assert isinstance(parallel, chord) and isinstance(kb_first, chain)
    return [
        *parallel.tasks,
        parallel.body,
        *kb_first.tasks,
        sequential,
        contract.merge_signature(app, turn_id=TURN),
        *(
            contract.agent_signature(app, turn_id=TURN, agent=agent, retrieve=True)
            for agent in Agent
        ),
        contract.ingest_signature(app, job_id=OTHER),
        contract.rescore_batch_signature(app, run_id=OTHER, batch=2),
    ]


def test_every_signature_carries_the_payload_its_task_validates() -> None:
    signatures = _signatures(Celery(set_as_current=False))
    built = {signature.name for signature in signatures}
    # every task the client or a worker publishes (beat sends the maintenance tasks)
    assert built == set(PAYLOADS) - {RELAY_TASK, SWEEP_TASK}
    for signature in signatures:
        payload = validate(PAYLOADS[signature.name], signature.kwargs)
        assert payload.model_dump() == signature.kwargs, signature.name
        assert json.loads(json.dumps(signature.kwargs)) == signature.kwargs  # JSON as it is


def test_the_signatures_refuse_what_the_worker_would_refuse() -> None:
    app = Celery(set_as_current=False)
    with pytest.raises(InvalidInput, match=r"^turn_id: "):
        contract.turn_workflow(app, turn_id="turn-1", topology=Topology.PARALLEL)
    with pytest.raises(InvalidInput, match=r"^turn_id: "):
        contract.agent_signature(app, turn_id="", agent=Agent.SUPPORT, retrieve=False)
    with pytest.raises(InvalidInput, match=r"^job_id: "):
        contract.ingest_signature(app, job_id="../etc/passwd")
    with pytest.raises(InvalidInput, match=r"^batch: "):
        contract.rescore_batch_signature(app, run_id=TURN, batch=-1)


def test_signatures_of_one_workflow_do_not_share_their_kwargs() -> None:
    workflow = contract.turn_workflow(
        Celery(set_as_current=False), turn_id=TURN, topology=Topology.PARALLEL
    )
    assert isinstance(workflow, chord)
    orchestrator, researcher = workflow.tasks
    orchestrator.kwargs["turn_id"] = OTHER
    assert researcher.kwargs == workflow.body.kwargs == {"turn_id": TURN}


# --------------------------------------------------------------------------- results

SAMPLES: list[TaskResult] = [
    OrchestratorResult(
        orchestration=Orchestration(
            phase=Phase.DISCOVERY,
            intent="pricing",
            proposed_agent=Agent.DISCOVERY,
            confidence=0.8,
        )
    ),
    ResearcherResult(kb_information_level=KbLevel.PARTIAL, retrieval_failed=True, hits=2),
    MergeResult(next_agent=Agent.SUPPORT, routing_reason="support question, kb ACCURATE"),
    AgentResult(agent=Agent.SUPPORT, ended=True, next_turn=OTHER),
    AgentResult(agent=Agent.DISCOVERY, ended=False),
    TurnEnded(),
    TurnEnded(failed=True, reason="it keeps killing its worker"),
    IngestResult(outcome="stored"),
    RescoreBatchResult(run_id=TURN, batch=4, end=BatchEnd.YIELDED, scored=3, already=1),
    RelayResult(sent=2, held_released=1, held_expired=0),
    SweepResult(redriven=1, failed=3),
]


def test_the_samples_cover_every_result_type() -> None:
    assert {type(sample) for sample in SAMPLES} == set(RESULT_TYPES)
    kinds = [cls.model_fields["kind"].default for cls in RESULT_TYPES]
    assert len(set(kinds)) == len(kinds)  # one kind, one type


@pytest.mark.parametrize("result", SAMPLES, ids=lambda r: type(r).__name__)
def test_a_result_goes_to_json_and_back_unchanged(result: TaskResult) -> None:
    wire = json.loads(json.dumps(to_wire(result)))  # what Celery stores and hands over
    assert from_wire(wire, type(result)) == result
    assert from_wire(wire, TaskResult) == result
    others = tuple(cls for cls in RESULT_TYPES if cls is not type(result))
    assert from_wire(wire, others) is None  # another kind is not read as this one


@pytest.mark.parametrize(
    "wire",
    [None, "done", 3, [], {}, {"ended": True}, {"kind": "nothing"}, {"kind": ["agent"]}],
)
def test_what_is_no_result_reads_as_none(wire: object) -> None:
    assert from_wire(wire, TaskResult) is None


def test_a_malformed_result_is_invalid_input_naming_the_field() -> None:
    wire = to_wire(AgentResult(agent=Agent.SUPPORT, ended=True))
    with pytest.raises(InvalidInput) as caught:
        from_wire({**wire, "agent": "oracle"}, AgentResult)
    assert caught.value.field == "agent"
    orchestrated = to_wire(SAMPLES[0])
    with pytest.raises(InvalidInput) as caught:
        from_wire({**orchestrated, "orchestration": {"phase": "lunch"}}, TaskResult)
    assert caught.value.field == "orchestration.phase"


def test_only_a_wanted_kind_is_validated() -> None:
    broken = {"kind": "orchestrator", "orchestration": "not an orchestration"}
    assert from_wire(broken, (AgentResult, TurnEnded, SweepResult)) is None
    with pytest.raises(InvalidInput):
        from_wire(broken, OrchestratorResult)


# --------------------------------------------------------------------------- workers


def _registered_tasks() -> dict[str, Any]:
    from workers.app import TASK_MODULES, app

    for module in TASK_MODULES:
        importlib.import_module(module)
    return {name: task for name, task in app.tasks.items() if name.startswith("chordline.")}


def test_every_task_registered_in_workers_has_its_payload_model_in_the_contract() -> None:
    registered = _registered_tasks()
    assert set(registered) == set(PAYLOADS)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_task_refuses_a_bad_payload_at_the_door(name: str) -> None:
    task = _registered_tasks()[name]
    model = PAYLOADS[name]
    with pytest.raises(InvalidInput) as caught:
        task.run(surely_not_a_field=1)
    # the first complaint of the task's own model: a field it requires, or the stranger
    required = [field for field, info in model.model_fields.items() if info.is_required()]
    assert caught.value.field == (required[0] if required else "surely_not_a_field")


class _Validated(Exception):
    pass


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_every_task_validates_with_its_model_in_the_contract(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.base

    task = _registered_tasks()[name]
    seen: list[type[Any]] = []

    def spy(model: type[Any], data: Any) -> Any:
        seen.append(model)
        raise _Validated

    monkeypatch.setattr(workers.base, "validate", spy)
    with pytest.raises(_Validated):
        task.run(turn_id=TURN)
    assert seen == [PAYLOADS[name]]
