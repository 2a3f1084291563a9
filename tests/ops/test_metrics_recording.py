"""What the per-turn recorder and the retry hook count, on values chosen by the test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from shared.contract import AgentResult, MergeResult, SweepResult, TaskResult, TurnEnded, to_wire
from shared.metrics import FinishedTurn, observe_turn
from shared.schemas import Agent
from workers.metrics import _enabled, _task_retried, stage_of


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_finished_turn_counts_its_level_its_fallbacks_and_its_latency() -> None:
    before = {
        "orchestrator": sample("chordline_stage_fallbacks_total", stage="orchestrator"),
        "agent": sample("chordline_stage_fallbacks_total", stage="agent"),
        "level": sample("chordline_kb_level_total", kb_information_level="PARTIAL"),
        "count": sample(
            "chordline_turn_duration_seconds_count", topology="kb_first", agent="support"
        ),
        "sum": sample("chordline_turn_duration_seconds_sum", topology="kb_first", agent="support"),
    }
    observe_turn(
        FinishedTurn(
            turn_id="00000000-0000-0000-0000-000000000001",
            tenant_id="acme",
            topology="kb_first",
            status="completed",
            agent="support",
            kb_information_level="PARTIAL",
            latency_s=1.25,
            agent_fallback=True,
            fallback_stages=["orchestrator"],
            spans=[],
        )
    )
    assert (
        sample("chordline_stage_fallbacks_total", stage="orchestrator")
        == before["orchestrator"] + 1
    )
    assert sample("chordline_stage_fallbacks_total", stage="agent") == before["agent"] + 1
    assert sample("chordline_kb_level_total", kb_information_level="PARTIAL") == before["level"] + 1
    assert (
        sample("chordline_turn_duration_seconds_count", topology="kb_first", agent="support")
        == before["count"] + 1
    )
    assert (
        sample("chordline_turn_duration_seconds_sum", topology="kb_first", agent="support")
        == before["sum"] + 1.25
    )


def test_retries_are_counted_per_task_name() -> None:
    name = "chordline.researcher"
    before = sample("chordline_task_retries_total", task=name)
    _enabled.set()
    try:
        _task_retried(sender=SimpleNamespace(name=name))
    finally:
        _enabled.clear()
    assert sample("chordline_task_retries_total", task=name) == before + 1


def test_task_names_map_to_stages() -> None:
    assert stage_of("chordline.agent.support") == "agent"
    assert stage_of("chordline.orchestrator") == "orchestrator"
    assert stage_of("chordline.kb.ingest_document") == "ingest"
    assert stage_of("chordline.maintenance.sweep_stuck_turns") == "maintenance"


def test_the_metrics_read_task_results_through_their_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers import metrics as worker_metrics

    finished: list[str] = []
    monkeypatch.setattr(worker_metrics._recorder, "turn_finished", finished.append)
    turn = "00000000-0000-0000-0000-000000000002"
    failed_before = sample("chordline_turns_total", status="failed")

    def count(result: TaskResult, state: str = "SUCCESS") -> None:
        worker_metrics._count_turns(state, turn, to_wire(result))

    count(AgentResult(agent=Agent.SUPPORT, ended=False))  # a duplicate: the turn had ended
    count(AgentResult(agent=Agent.SUPPORT, ended=True), state="FAILURE")
    assert finished == []
    count(AgentResult(agent=Agent.SUPPORT, ended=True))
    assert finished == [turn]
    count(TurnEnded())  # the merge found the turn ended: nobody failed it here
    count(MergeResult(next_agent=Agent.SUPPORT, routing_reason="r"))
    count(SweepResult(redriven=3, failed=0))
    assert sample("chordline_turns_total", status="failed") == failed_before
    count(TurnEnded(failed=True, reason="it keeps killing its worker"))
    count(SweepResult(redriven=0, failed=2))
    assert sample("chordline_turns_total", status="failed") == failed_before + 3
    worker_metrics._count_turns("SUCCESS", turn, {"ended": True, "status": "failed"})  # untyped
    assert finished == [turn]
    assert sample("chordline_turns_total", status="failed") == failed_before + 3
