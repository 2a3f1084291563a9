"""Re-scoring runs end to end: a real rescoring worker, real Postgres, Redis and history."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from shared.client import enqueue_turn, wait_for_turn
from shared.contract import BatchEnd
from shared.db.models import Conversation, Turn, TurnSpan
from shared.db.session import session_scope
from shared.kb.ingest import ingest_paths
from shared.providers.registry import get_providers
from shared.rescoring.batch import score_batch
from shared.rescoring.fanout import publish_batches
from shared.rescoring.models import RescoreResult
from shared.rescoring.runs import (
    RunStatus,
    create_run,
    read_progress,
    resume_run,
    start_run,
)
from shared.rescoring.selection import RunRequest, plan_run
from shared.tools.cli import rescore as rescore_commands
from shared.tools.demo.conversation import SCRIPT
from shared.tools.reports.rescoring import build_report, write_csv
from tests.conftest import new_tenant
from tests.rescoring.conftest import (
    FAST_ENV,
    history_tenant,
    rescoring_worker,
    scored_at_by_turn,
    wait_for,
    wait_until_finished,
)

pytestmark = pytest.mark.integration

SAP_QUESTION = "Can it connect to our on-prem SAP R/3 system over RFC?"
# A follow-up with no cue of its own: the orchestrator routes it from the conversation's
# memory (the previous agent), so re-scoring must rebuild that memory as it was.
FOLLOW_UP = "And what would that look like for us exactly?"
SAP_DOC = """# SAP connector

## Connecting to an on-prem SAP R/3 system over RFC

Halyard connects to on-prem SAP R/3 and SAP ECC systems over RFC with the Halyard SAP
connector. The connector runs inside your network, calls the RFC function modules for
goods movements and material stock, and syncs stock levels with Halyard every five minutes.
"""


@pytest.fixture(scope="module")
def worker(services: None) -> Iterator[None]:
    with rescoring_worker(FAST_ENV):
        yield


def play_demo_history() -> str:
    """A new tenant whose history is the demo conversation (plus a follow-up), played live."""
    tenant = new_tenant()
    messages = [*SCRIPT[:3], FOLLOW_UP, *SCRIPT[3:]]
    ids = [enqueue_turn(tenant, "demo-like", message) for message in messages]
    for turn_id in ids:
        assert wait_for_turn(turn_id, timeout=60).status == "completed"
    return tenant


@pytest.fixture(scope="module")
def demo_history(workers: None) -> str:
    """The demo history, shared by the tests that leave its tenant as it was."""
    return play_demo_history()


@pytest.fixture
def own_demo_history(workers: None) -> str:
    """A demo history of the test's own, for a test that changes its tenant (its KB)."""
    return play_demo_history()


def live_rows(tenant: str) -> dict[str, Any]:
    """Every column of the tenant's turns and conversations, and its span count."""
    with session_scope() as session:
        turns = {
            str(t.id): {c.key: getattr(t, c.key) for c in Turn.__table__.columns}
            for t in session.scalars(select(Turn).where(Turn.tenant_id == tenant))
        }
        conversations = {
            str(c.id): {k.key: getattr(c, k.key) for k in Conversation.__table__.columns}
            for c in session.scalars(select(Conversation).where(Conversation.tenant_id == tenant))
        }
        spans = session.scalar(
            select(func.count())
            .select_from(TurnSpan)
            .join(Turn, Turn.id == TurnSpan.turn_id)
            .where(Turn.tenant_id == tenant)
        )
    return {"turns": turns, "conversations": conversations, "spans": spans}


def result_of(run_id: str, message: str) -> RescoreResult:
    with session_scope() as session:
        row = session.scalar(
            select(RescoreResult)
            .join(Turn, Turn.id == RescoreResult.turn_id)
            .where(RescoreResult.run_id == uuid.UUID(run_id), Turn.message == message)
        )
    assert row is not None
    return row


def run_to_completion(request: RunRequest) -> str:
    started = start_run(request)
    wait_until_finished(started.run_id)
    assert read_progress(started.run_id).status is RunStatus.COMPLETED
    return started.run_id


# --------------------------------------------------------------------------- runs


def test_rescoring_an_unchanged_history_reproduces_every_decision(
    worker: None, demo_history: str
) -> None:
    before = live_rows(demo_history)
    run_id = run_to_completion(RunRequest(tenant_id=demo_history))
    report = build_report_for(run_id)
    assert report.turns == len(SCRIPT) + 1
    assert report.changed == 0, report.examples
    # Every agent and level stays where it was: the matrices are diagonal.
    assert all(set(row) == {old} for old, row in report.agent_matrix.items())
    assert all(set(row) == {old} for old, row in report.level_shift.items())
    follow_up = result_of(run_id, FOLLOW_UP)
    assert follow_up.new_intent == "follow_up" and follow_up.new_agent == follow_up.old_agent
    assert report.cost["by_stage"]["orchestrator"]["calls"] == len(SCRIPT) + 1
    assert report.cost["calls"] > 0 and report.cost["tokens_in"] > 0
    assert live_rows(demo_history) == before  # live rows untouched


def build_report_for(run_id: str, examples: int = 10) -> Any:
    with session_scope() as session:
        return build_report(session, run_id, examples=examples)


def test_a_kb_change_shows_missing_to_accurate_and_the_new_route(
    worker: None, own_demo_history: str, tmp_path: Path
) -> None:
    tenant = own_demo_history
    first = run_to_completion(RunRequest(tenant_id=tenant))
    assert result_of(first, SAP_QUESTION).new_level == "MISSING"
    (tmp_path / "sap-connector.md").write_text(SAP_DOC)
    ingest_paths([tmp_path], tenant_id=tenant, embedder=get_providers().embedder)
    before = live_rows(tenant)

    run_id = run_to_completion(RunRequest(tenant_id=tenant))
    sap = result_of(run_id, SAP_QUESTION)
    assert (sap.old_level, sap.new_level) == ("MISSING", "ACCURATE")
    assert (sap.old_agent, sap.new_agent) == ("adaptive_response", "technical_consultant")
    assert sap.routing_changed is True
    assert sap.new_hits and sap.new_hits[0]["title"] == "SAP connector"

    report = build_report_for(run_id)
    assert report.agent_matrix["adaptive_response"]["technical_consultant"] >= 1
    assert report.level_shift["MISSING"]["ACCURATE"] >= 1
    assert report.changed >= 1 and 0 < report.changed_share < 1
    example = next(e for e in report.examples if e["message"] == SAP_QUESTION)
    assert example["old_agent"] == "adaptive_response"
    assert example["new_agent"] == "technical_consultant"
    assert report.examples[0]["old_agent"] != report.examples[0]["new_agent"]

    out = io.StringIO()
    with session_scope() as session:
        assert write_csv(session, run_id, out) == len(SCRIPT) + 1
    rows = {r["message"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert rows[SAP_QUESTION]["new_agent"] == "technical_consultant"
    assert rows[SAP_QUESTION]["routing_changed"] == "True"
    assert live_rows(tenant) == before  # the historical rows still say what happened


def test_overridden_settings_apply_to_the_run_only(worker: None, demo_history: str) -> None:
    # Thresholds of zero: every question with any candidate is ACCURATE, so the SAP question
    # (MISSING under the tenant's thresholds) now goes to the technical consultant.
    with session_scope() as session:
        tenant_settings_before = plan_run(session, RunRequest(tenant_id=demo_history)).settings
    run_id = run_to_completion(
        RunRequest(
            tenant_id=demo_history, set_pairs=("thresholds.accurate=0", "thresholds.partial=0")
        )
    )
    report = build_report_for(run_id)
    assert {new for row in report.level_shift.values() for new in row} == {"ACCURATE"}
    assert report.agent_matrix["adaptive_response"]["technical_consultant"] >= 1
    # what the overrides changed: the SAP question was MISSING when it ran live
    sap = result_of(run_id, SAP_QUESTION)
    assert (sap.old_level, sap.new_level) == ("MISSING", "ACCURATE")
    assert (sap.old_agent, sap.new_agent) == ("adaptive_response", "technical_consultant")
    # the run keeps its overrides, parsed from the "--set" strings into values
    assert report.run["overrides"] == {"thresholds.accurate": 0, "thresholds.partial": 0}
    with session_scope() as session:
        after = plan_run(session, RunRequest(tenant_id=demo_history)).settings
    assert after == tenant_settings_before


def test_stages_and_conversation_narrow_what_is_rerun(worker: None, demo_history: str) -> None:
    run_id = run_to_completion(
        RunRequest(tenant_id=demo_history, conversation="demo-like", stages="researcher")
    )
    report = build_report_for(run_id)
    assert report.turns == len(SCRIPT) + 1
    assert "orchestrator" not in report.cost["by_stage"]  # stored orchestration reused
    assert report.cost["by_stage"]["researcher"]["calls"] > 0


# --------------------------------------------------------------------------- resume


def test_resume_enqueues_only_unscored_batches_and_never_scores_twice(worker: None) -> None:
    tenant = history_tenant(60)
    with session_scope() as session:
        plan = plan_run(session, RunRequest(tenant_id=tenant, batch_size=10))
        run_id = create_run(session, plan).run_id
    # The process that created the run died half way through the fan-out.
    assert publish_batches(run_id, range(3)) == 3
    wait_for(lambda: read_progress(run_id).done == 30, timeout_s=60, what="3 batches")
    first_half = scored_at_by_turn(run_id)
    assert len(first_half) == 30 and read_progress(run_id).status is RunStatus.RUNNING

    # A batch delivered again finds nothing left to score.
    again = score_batch(run_id, 0)
    assert (again.end, again.scored) == (BatchEnd.DONE, 0)

    assert resume_run(run_id) == 3  # batches 3, 4, 5 only
    wait_until_finished(run_id)
    progress = read_progress(run_id)
    assert (progress.status, progress.done, progress.total) == (RunStatus.COMPLETED, 60, 60)
    after = scored_at_by_turn(run_id)
    assert {t: after[t] for t in first_half} == first_half  # not scored a second time
    with session_scope() as session:
        rows = session.scalar(
            select(func.count())
            .select_from(RescoreResult)
            .where(RescoreResult.run_id == uuid.UUID(run_id))
        )
        assert rows == 60
        one = session.scalar(
            select(RescoreResult).where(RescoreResult.run_id == uuid.UUID(run_id)).limit(1)
        )
        assert one is not None
        # the database refuses a second row for the same turn in the same run
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(RescoreResult(run_id=one.run_id, turn_id=one.turn_id, batch=0, position=9))
            session.flush()


# --------------------------------------------------------------------------- the CLI


def test_cli_dry_run_status_and_report(worker: None, demo_history: str, tmp_path: Path) -> None:
    cli = CliRunner()
    dry = cli.invoke(
        rescore_commands.app,
        ["--tenant", demo_history, "--dry-run", "--set", "top_k=3"],
        catch_exceptions=False,
    )
    assert dry.exit_code == 0, dry.output
    assert (
        f"{len(SCRIPT) + 1} turns of tenant" in dry.output and "nothing was created" in dry.output
    )
    assert '"top_k": 3' in dry.output

    run_id = run_to_completion(RunRequest(tenant_id=demo_history))
    status = cli.invoke(rescore_commands.app, ["status", run_id, "--json"], catch_exceptions=False)
    assert json.loads(status.stdout) == {
        "run": run_id,
        "tenant": demo_history,
        "status": "completed",
        "done": len(SCRIPT) + 1,
        "total": len(SCRIPT) + 1,
    }
    csv_path = tmp_path / "turns.csv"
    report = cli.invoke(
        rescore_commands.app,
        ["report", run_id, "--json", "--csv", str(csv_path)],
        catch_exceptions=False,
    )
    data = json.loads(report.stdout)
    assert {"turns", "changed", "agent_matrix", "level_shift", "examples"} <= set(data)
    assert data["turns"] == len(SCRIPT) + 1 and data["cost"]["calls"] > 0
    assert len(csv_path.read_text().splitlines()) == len(SCRIPT) + 2  # header + one per turn


def test_a_turn_cancelled_by_a_double_text_is_left_out_and_its_message_rescored_with_the_next(
    worker: None, workers: None
) -> None:
    tenant = new_tenant({"in_flight_policy": "interrupt"})
    first = enqueue_turn(tenant, "double", "Our barcode scanners stopped syncing, what do we do?")
    second = enqueue_turn(tenant, "double", "please help")  # milliseconds later: no cue alone
    answered = wait_for_turn(second, timeout=60)
    assert wait_for_turn(first, timeout=60).status == "cancelled"
    assert answered.carried_message and answered.next_agent == "support"
    run_id = run_to_completion(RunRequest(tenant_id=tenant))
    report = build_report_for(run_id)
    assert report.turns == 1  # the cancelled turn has no decision of its own to re-run
    assert report.changed == 0, report.examples  # re-decided on both messages, as it was
