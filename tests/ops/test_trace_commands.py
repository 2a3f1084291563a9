"""`chordline trace` and `chordline critical-path` on turns that real workers ran."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shared.client import enqueue_turn, wait_for_turn
from shared.db.session import session_scope
from shared.db.spans import spans_of
from shared.errors import InvalidInput
from shared.tools.cli.main import app
from tests.conftest import new_tenant

pytestmark = pytest.mark.integration

QUESTIONS = [
    "Does Halyard have a REST API and webhooks for stock changes?",
    "How much does the Pro plan cost per warehouse?",
    "Hi there, we run three warehouses and want to know more.",
]


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def send_turns(tenant: str, questions: list[str]) -> list[str]:
    turn_ids = [enqueue_turn(tenant, f"c{i}", q) for i, q in enumerate(questions)]
    for turn_id in turn_ids:
        assert wait_for_turn(turn_id, timeout=90).status == "completed"
    return turn_ids


def header_stage_that_finished_last(turn_id: str) -> str:
    with session_scope() as session:
        spans = [s for s in spans_of(session, turn_id) if s.stage in ("orchestrator", "researcher")]
    return max(spans, key=lambda s: s.finished_at).stage


def test_trace_draws_every_stage_with_where_and_when_it_ran(workers: None) -> None:
    tenant = new_tenant()
    (turn_id,) = send_turns(tenant, QUESTIONS[:1])
    with session_scope() as session:
        spans = {s.stage: s for s in spans_of(session, turn_id)}
    waited = header_stage_that_finished_last(turn_id)

    text = run("trace", turn_id, "--width", "60")
    lines = text.splitlines()
    assert f"waited on: {waited}" in text
    timeline: dict[str, str] = {}
    for line in lines:  # the timeline's rows come first, one per stage
        if line.split()[:1]:
            timeline.setdefault(line.split()[0], line)
    assert "◀ waited on" in timeline[waited]
    other = "orchestrator" if waited == "researcher" else "researcher"
    assert "◀ waited on" not in timeline[other]
    assert any(line.startswith("┊ merge") for line in lines)
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("stages (")) :]
    for stage, span in spans.items():
        row = next(line for line in table if line.lstrip("* ").startswith(f"{stage} "))
        assert span.queue is not None, stage
        assert span.queue in row and f"{span.worker} / {span.pid}" in row, row
    assert "kb_information_level, research_note, research_results" in text

    trace = json.loads(run("trace", turn_id, "--json"))
    assert trace["waited_on"] == waited and trace["tenant_id"] == tenant
    assert trace["overlap_ms"] > 0
    by_stage = {s["stage"]: s for s in trace["stages"]}
    assert set(by_stage) == {"orchestrator", "researcher", "merge", "agent"}
    for stage, span in spans.items():
        entry = by_stage[stage]
        assert entry["queue"] == span.queue and entry["pid"] == span.pid
        assert entry["attempt"] == span.attempt == 1
        assert entry["fields_written"] == list(span.fields_written)
        assert span.enqueued_at is not None
        assert entry["queue_wait_ms"] == pytest.approx(
            (span.started_at - span.enqueued_at) * 1000, abs=0.1
        )
    critical = [s["stage"] for s in trace["critical_path"] if s["stage"] != "queue_wait"]
    assert critical == [waited, "merge", "agent"]


def test_critical_path_answers_which_stage_each_turn_waited_on(workers: None) -> None:
    parallel_tenant = new_tenant()
    sequential_tenant = new_tenant({"topology": "sequential"})
    parallel_turns = send_turns(parallel_tenant, QUESTIONS)
    sequential_turns = send_turns(sequential_tenant, QUESTIONS[:2])

    report = json.loads(
        run("critical-path", "--last", "100", "--tenant", parallel_tenant, "--json")
    )
    assert set(report) == {"turns", "by_stage", "waited_on"}
    assert {t["turn_id"] for t in report["turns"]} == set(parallel_turns)
    expected = {t: header_stage_that_finished_last(t) for t in parallel_turns}
    assert {t["turn_id"]: t["waited_on"] for t in report["turns"]} == expected
    counts: dict[str, int] = {}
    for stage in expected.values():
        counts[stage] = counts.get(stage, 0) + 1
    assert report["waited_on"] == counts
    assert sum(s["share"] for s in report["by_stage"].values()) == pytest.approx(1, abs=1e-3)
    for turn in report["turns"]:
        assert sum(turn["critical_ms"].values()) == pytest.approx(turn["total_ms"], abs=0.5)
    agent = report["by_stage"]["agent"]
    assert 0 < agent["p50_ms"] <= agent["p95_ms"]

    sequential = json.loads(run("critical-path", "--tenant", sequential_tenant, "--json"))
    assert {t["turn_id"] for t in sequential["turns"]} == set(sequential_turns)
    assert sequential["waited_on"] == {"orchestrator": 2}
    assert all("researcher" in t["critical_ms"] for t in sequential["turns"])

    assert run("critical-path", "--last", "1").count("waited on") >= 1
    latest = json.loads(run("critical-path", "--last", "1", "--json"))
    assert len(latest["turns"]) == 1


def test_bad_arguments_are_refused_naming_the_field(services: None) -> None:
    runner = CliRunner()
    for args, field in (
        (["trace", "not-a-uuid"], "turn_id"),
        (["critical-path", "--last", "0"], "--last"),
        (["critical-path", "--tenant", "no spaces allowed"], "tenant"),
    ):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, InvalidInput), result.output
        assert result.exception.field == field
