"""A run publishes what its snapshot holds, and one copy of a batch scores at a time.

No rescoring worker listens in this module: batches are scored here, in the test process,
so that a test can put a second copy of a batch exactly where it wants it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text

from shared.config import reset_settings
from shared.contract import BatchEnd
from shared.db.models import Turn
from shared.db.session import database_url, get_engine, session_scope
from shared.errors import InvalidInput
from shared.rescoring import batch as batch_module
from shared.rescoring import runs as runs_module
from shared.rescoring.batch import batch_lock_key, score_batch
from shared.rescoring.models import RescoreRun
from shared.rescoring.runs import (
    CreatedRun,
    RunStatus,
    cancel_run,
    create_run,
    read_progress,
    resume_run,
    start_run,
)
from shared.rescoring.scoring import rescore_turn
from shared.rescoring.selection import RunPlan, RunRequest, plan_run
from tests.rescoring.conftest import history_tenant, rescoring_queue_length, run_rows, wait_for

pytestmark = pytest.mark.integration


def add_finished_turn(tenant: str) -> None:
    """A turn of the tenant that finishes now: a copy of one of its turns, committed."""
    with session_scope() as session:
        turn = session.scalars(select(Turn).where(Turn.tenant_id == tenant).limit(1)).one()
        values = {c.key: getattr(turn, c.key) for c in Turn.__table__.columns}
        values.update(id=uuid.uuid4(), seq=turn.seq + 10_000, idempotency_key=None, created_at=None)
        session.add(Turn(**{k: v for k, v in values.items() if v is not None}))


@pytest.fixture
def turn_finishes_after_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan_run counts the selection; then, before the snapshot, one more turn finishes."""
    real = plan_run

    def counted_then_one_more(session: Any, request: RunRequest) -> RunPlan:
        plan = real(session, request)
        add_finished_turn(request.tenant_id)
        return plan

    monkeypatch.setattr(runs_module, "plan_run", counted_then_one_more)


def test_a_turn_that_finishes_after_the_count_gets_its_batch_published(
    services: None, turn_finishes_after_the_count: None
) -> None:
    # 10 turns counted, in 2 batches of 5; the snapshot holds 11: a third batch.
    tenant = history_tenant(10, per_conversation=5)
    queued = rescoring_queue_length()
    started = start_run(RunRequest(tenant_id=tenant, batch_size=5))
    assert started.batches_sent == 3
    assert (started.plan.total_turns, started.plan.total_batches) == (11, 3)
    assert rescoring_queue_length() == queued + 3
    with session_scope() as session:
        run = session.get(RescoreRun, uuid.UUID(started.run_id))
        assert run is not None and (run.total_turns, run.total_batches) == (11, 3)
    outcomes = [score_batch(started.run_id, b) for b in range(started.batches_sent)]
    assert [o.end for o in outcomes] == [BatchEnd.DONE] * 3
    progress = read_progress(started.run_id)
    assert (progress.status, progress.done, progress.total) == (RunStatus.COMPLETED, 11, 11)


@pytest.fixture
def limit_of_ten(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CHORDLINE_RESCORE_MAX_TURNS_PER_RUN", "10")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_the_snapshot_keeps_to_the_per_run_limit(
    services: None, limit_of_ten: None, turn_finishes_after_the_count: None
) -> None:
    tenant = history_tenant(10, per_conversation=5)  # exactly the limit when counted
    queued = rescoring_queue_length()
    with pytest.raises(InvalidInput) as caught:
        start_run(RunRequest(tenant_id=tenant, batch_size=5))
    assert caught.value.field == "selection"
    assert "more than 10 turns match now" in str(caught.value)
    assert (run_rows(tenant), rescoring_queue_length()) == (0, queued)  # nothing written


def new_run(turns: int, *, batch_size: int) -> CreatedRun:
    """A run written but not published: the test plays the broker."""
    tenant = history_tenant(turns, per_conversation=3)
    with session_scope() as session:
        return create_run(
            session, plan_run(session, RunRequest(tenant_id=tenant, batch_size=batch_size))
        )


def count_model_calls(monkeypatch: pytest.MonkeyPatch, during_first: Any = None) -> list[uuid.UUID]:
    """The turns handed to the models, in order; ``during_first`` runs inside the first."""
    real = rescore_turn
    calls: list[uuid.UUID] = []

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["turn"].id)
        if len(calls) == 1 and during_first is not None:
            during_first()
        return real(**kwargs)

    monkeypatch.setattr(batch_module, "rescore_turn", counting)
    return calls


def test_a_second_copy_of_a_batch_being_scored_calls_no_model(
    services: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = new_run(6, batch_size=6)
    second: list[Any] = []
    # While the first copy scores its first turn, a second copy of the batch is delivered
    # (resume on a running run re-publishes batches still queued or running).
    calls = count_model_calls(
        monkeypatch, during_first=lambda: second.append(score_batch(created.run_id, 0))
    )
    first = score_batch(created.run_id, 0)
    assert (second[0].end, second[0].scored) == (BatchEnd.BUSY, 0)
    assert (first.end, first.scored, first.already) == (BatchEnd.DONE, 6, 0)
    assert len(calls) == len(set(calls)) == 6  # each turn went to the models once
    assert read_progress(created.run_id).status is RunStatus.COMPLETED

    # A copy delivered later finds the run completed, and calls no model either.
    again = score_batch(created.run_id, 0)
    assert (again.end, again.scored) == (BatchEnd.NOT_RUNNING, 0) and len(calls) == 6


HOLDER = """
import sys, time
from sqlalchemy import create_engine, text
conn = create_engine(sys.argv[1]).connect()
conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": int(sys.argv[2])})
conn.commit()
print("held", flush=True)
time.sleep(600)
"""


def claim_is_free(key: int) -> bool:
    """Whether a connection of this process can take the batch's claim (let go at once)."""
    with get_engine().connect() as conn:
        free = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
        if free:
            conn.scalar(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        conn.commit()
    return free


def test_a_batch_whose_worker_died_is_scored_on_resume(
    services: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = new_run(6, batch_size=3)
    calls = count_model_calls(monkeypatch)
    key = batch_lock_key(uuid.UUID(created.run_id), 1)
    # A worker process claims batch 1 and dies mid-batch (SIGKILL, no goodbye).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url(), str(key)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert score_batch(created.run_id, 1).end is BatchEnd.BUSY  # the holder is alive
        assert calls == []
    finally:
        holder.kill()
        holder.wait(timeout=10)
    wait_for(lambda: claim_is_free(key), timeout_s=10, what="the dead holder's claim to go")
    assert score_batch(created.run_id, 0).scored == 3
    assert resume_run(created.run_id) == 1  # batch 1 only
    outcome = score_batch(created.run_id, 1)
    assert (outcome.end, outcome.scored) == (BatchEnd.DONE, 3)
    progress = read_progress(created.run_id)
    assert (progress.status, progress.done) == (RunStatus.COMPLETED, 6)
    assert len(calls) == len(set(calls)) == 6


def test_a_run_resumed_while_a_cancelled_copy_holds_the_claim_is_not_stranded(
    services: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = new_run(3, batch_size=3)
    resumed: list[int] = []
    cancel_run(created.run_id)
    real_load = batch_module._load_batch

    def resumed_meanwhile(session: Any, run_id: uuid.UUID, batch: int) -> Any:
        loaded = real_load(session, run_id, batch)  # sees the run cancelled
        if resumed:  # the resume's copy, below
            return loaded
        # ...and before this copy lets go of the claim, the run is resumed, and the
        # resume's copy of the batch finds the claim taken.
        resumed.append(resume_run(created.run_id))
        busy = score_batch(created.run_id, batch)
        assert busy.end is BatchEnd.BUSY
        return loaded

    monkeypatch.setattr(batch_module, "_load_batch", resumed_meanwhile)
    queued = rescoring_queue_length()
    assert score_batch(created.run_id, 0).end is BatchEnd.CANCELLED
    assert resumed == [1]
    # The resume's copy and the one the cancelled copy re-enqueued once it let go.
    assert rescoring_queue_length() == queued + 2
    monkeypatch.setattr(batch_module, "_load_batch", real_load)
    assert score_batch(created.run_id, 0).scored == 3
    assert read_progress(created.run_id).status is RunStatus.COMPLETED


def test_the_claim_goes_back_when_the_batch_ends(services: None) -> None:
    created = new_run(6, batch_size=3)
    assert score_batch(created.run_id, 0).end is BatchEnd.DONE
    assert claim_is_free(batch_lock_key(uuid.UUID(created.run_id), 0))
    again = score_batch(created.run_id, 0)  # claimed again, nothing left to score
    assert (again.end, again.scored) == (BatchEnd.DONE, 0)
    assert read_progress(created.run_id).status is RunStatus.RUNNING  # batch 1 is left
