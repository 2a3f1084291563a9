"""A killed worker, a cancelled run, and live turns next to a running batch."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from shared.client import enqueue_turn, wait_for_turn
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.rescoring.runs import RunStatus, cancel_run, read_progress, resume_run, start_run
from shared.rescoring.selection import RunRequest
from shared.tools.reports.rescoring import build_report
from tests.rescoring.conftest import (
    SLOW_ENV,
    history_tenant,
    rescoring_worker,
    scored_at_by_turn,
    wait_for,
    wait_until_finished,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def slow_worker(services: None) -> Iterator[None]:
    with rescoring_worker(SLOW_ENV):
        yield


def test_a_run_survives_a_killed_worker_and_resumes_without_scoring_twice(
    services: None,
) -> None:
    tenant = history_tenant(60)
    with rescoring_worker(SLOW_ENV) as group:
        started = start_run(RunRequest(tenant_id=tenant, batch_size=5))
        wait_for(lambda: read_progress(started.run_id).done >= 10, timeout_s=60, what="progress")
        group.processes["rescoring"].send_signal(signal.SIGKILL)  # mid-batch, no goodbye
        group.processes["rescoring"].wait(timeout=10)
    run_id = started.run_id
    before = scored_at_by_turn(run_id)
    progress = read_progress(run_id)
    assert progress.status is RunStatus.RUNNING and 10 <= progress.done < progress.total

    with rescoring_worker(SLOW_ENV):
        assert resume_run(run_id) >= 1
        wait_until_finished(run_id, timeout_s=120)
    progress = read_progress(run_id)
    assert (progress.status, progress.done, progress.total) == (RunStatus.COMPLETED, 60, 60)
    after = scored_at_by_turn(run_id)
    assert len(after) == 60
    assert {turn: after[turn] for turn in before} == before  # each turn scored once


def test_cancel_stops_a_run_and_resume_continues_it(slow_worker: None) -> None:
    tenant = history_tenant(80)
    started = start_run(RunRequest(tenant_id=tenant, batch_size=5))
    run_id = started.run_id
    wait_for(lambda: read_progress(run_id).done >= 5, timeout_s=60, what="progress")
    cancelled = cancel_run(run_id)
    assert cancelled.status is RunStatus.CANCELLED
    # Batches that were mid-turn write what they had and stop at their next check.
    settled = _settled_done(run_id)
    assert settled < 80
    with pytest.raises(InvalidInput, match="only a running run cancels"):
        cancel_run(run_id)
    with session_scope() as session:
        partial = build_report(session, run_id)
    assert partial.turns == settled and partial.run["status"] == "cancelled"

    assert resume_run(run_id) >= 1
    wait_until_finished(run_id, timeout_s=120)
    progress = read_progress(run_id)
    assert (progress.status, progress.done) == (RunStatus.COMPLETED, 80)


def _settled_done(run_id: str) -> int:
    """The scored count once it has stopped moving for two seconds."""

    last, stable_since = read_progress(run_id).done, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() - stable_since < 2.0:
        assert time.monotonic() < deadline, "the cancelled run kept scoring"
        time.sleep(0.25)
        now = read_progress(run_id).done
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def test_live_turns_do_not_wait_behind_a_running_batch(workers: None, slow_worker: None) -> None:
    tenant = history_tenant(200)
    started = start_run(RunRequest(tenant_id=tenant, batch_size=50))
    wait_for(lambda: read_progress(started.run_id).done >= 5, timeout_s=60, what="progress")
    turn = wait_for_turn(
        enqueue_turn(tenant, "live-now", "Does Halyard have a REST API and webhooks?"),
        timeout=30,
    )
    progress = read_progress(started.run_id)
    cancel_run(started.run_id)
    assert turn.status == "completed" and turn.next_agent == "technical_consultant"
    # The live turn ended while the run still had most of its batches to go.
    assert progress.status is RunStatus.RUNNING and progress.done < progress.total
