"""The critical-path walk on stage timings whose answer is known by construction."""

from __future__ import annotations

import pytest

from shared.errors import InvalidInput
from shared.tools.reports.critical_path import check_last, summarise
from shared.tools.reports.trace import render_trace
from shared.trace import StageBar, TurnTrace, critical_path


def bar(stage: str, start: float, end: float, *, queued: float | None = None) -> StageBar:
    return StageBar(
        stage=stage,
        queue=stage,
        worker=f"{stage}@host",
        pid=100,
        attempt=1,
        wait_start_ms=queued,
        start_ms=start,
        end_ms=end,
        fields=[f"{stage}_field"],
    )


def parallel(orchestrator_ms: float, researcher_ms: float) -> list[StageBar]:
    header_end = max(10 + orchestrator_ms, 12 + researcher_ms)
    return [
        bar("orchestrator", 10, 10 + orchestrator_ms, queued=5),
        bar("researcher", 12, 12 + researcher_ms, queued=5),
        bar("merge", header_end + 8, header_end + 13, queued=header_end + 4),
        bar("agent", header_end + 20, header_end + 820, queued=header_end + 15),
    ]


def test_the_slower_header_stage_bounds_a_parallel_turn() -> None:
    path = critical_path(parallel(orchestrator_ms=300, researcher_ms=500))
    assert path.waited_on == "researcher"
    assert [s.stage for s in path.segments] == [
        "queue_wait",
        "researcher",
        "queue_wait",
        "merge",
        "queue_wait",
        "agent",
    ]
    ms = path.ms_by_stage()
    assert ms["researcher"] == 500
    assert "orchestrator" not in ms
    assert ms["merge"] == 5 and ms["agent"] == 800
    # researcher 12..512, merge 520..525, agent 532..1332: gaps 12 + 8 + 7
    assert ms["queue_wait"] == pytest.approx(27)
    assert sum(ms.values()) == pytest.approx(path.total_ms) == pytest.approx(1332)

    assert critical_path(parallel(orchestrator_ms=600, researcher_ms=200)).waited_on == (
        "orchestrator"
    )


def test_a_sequential_turn_waits_on_the_orchestrator_and_runs_retrieval_after_the_merge() -> None:
    bars = [
        bar("orchestrator", 5, 505, queued=2),
        bar("merge", 506, 510),  # routed inside the orchestrator's task
        bar("researcher", 530, 900, queued=515),  # the agent's own retrieval
        bar("agent", 901, 1900, queued=515),
    ]
    path = critical_path(bars)
    assert path.waited_on == "orchestrator"
    assert [b.stage for b in path.chain] == ["orchestrator", "merge", "researcher", "agent"]
    assert path.ms_by_stage()["researcher"] == 370


def test_the_report_aggregates_shares_percentiles_and_counts() -> None:
    traces = [
        TurnTrace(f"t{i}", "acme", "parallel", "completed", "support", "ACCURATE", None, bars)
        for i, bars in enumerate(
            [parallel(300, 500), parallel(600, 200), parallel(700, 100), parallel(100, 400)]
        )
    ]
    report = summarise(traces).as_dict()
    assert set(report) == {"turns", "by_stage", "waited_on"}
    assert report["waited_on"] == {"researcher": 2, "orchestrator": 2}
    assert set(report["by_stage"]) == {"orchestrator", "researcher", "queue_wait", "merge", "agent"}
    for entry in report["by_stage"].values():
        assert set(entry) == {"share", "p50_ms", "p95_ms"}
    assert sum(e["share"] for e in report["by_stage"].values()) == pytest.approx(1, abs=1e-3)
    # the orchestrator was on the critical path in two turns: 600 and 700 ms
    assert report["by_stage"]["orchestrator"]["p50_ms"] == 650
    assert report["by_stage"]["orchestrator"]["p95_ms"] == 695
    assert report["by_stage"]["agent"]["p50_ms"] == 800
    total = sum(t["total_ms"] for t in report["turns"])
    agent_share = 4 * 800 / total
    assert report["by_stage"]["agent"]["share"] == pytest.approx(agent_share, abs=1e-4)
    assert [t["waited_on"] for t in report["turns"]] == [
        "researcher",
        "orchestrator",
        "orchestrator",
        "researcher",
    ]


def test_the_trace_highlights_the_stage_waited_on_and_marks_the_merge() -> None:
    from rich.console import Console

    trace = TurnTrace(
        "t1", "acme", "parallel", "completed", "support", "ACCURATE", 1340.0, parallel(300, 500)
    )
    console = Console(width=140, record=True, color_system=None)
    console.print(render_trace(trace, width=60))
    text = console.export_text()
    researcher_row = next(line for line in text.splitlines() if line.startswith("researcher"))
    assert "◀ waited on" in researcher_row
    assert "┊ merge" in text
    orchestrator_row = next(line for line in text.splitlines() if line.startswith("orchestrator"))
    assert "┊" in orchestrator_row and "◀" not in orchestrator_row


def test_bad_limits_are_refused() -> None:
    with pytest.raises(InvalidInput, match="--last"):
        check_last(0)
    with pytest.raises(InvalidInput, match="--last"):
        check_last(10_001)
