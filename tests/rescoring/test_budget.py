"""The per-tenant rate budget on real Redis: a token bucket that live traffic fills first."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Select, text

from shared.client import enqueue_turn, wait_for_turn
from shared.config import RescoringSettings, reset_settings
from shared.contract import BatchEnd
from shared.db.session import get_engine
from shared.rescoring.batch import score_batch
from shared.rescoring.budget import (
    LiveLoad,
    ObservedLiveLoad,
    RateBudget,
    arrivals_query,
    estimated_latency_s,
)
from shared.rescoring.runs import read_progress, start_run
from shared.rescoring.selection import RunRequest
from tests.conftest import new_tenant
from tests.rescoring.conftest import history_tenant, rescoring_queue_length

pytestmark = pytest.mark.integration


class FixedLoad:
    def __init__(self, load: LiveLoad) -> None:
        self.load = load

    def sample(self, tenant_id: str) -> LiveLoad:
        return self.load


def budget(
    *, calls_per_s: float, live: LiveLoad, backlog_limit: int = 0, tenant: str | None = None
) -> RateBudget:
    settings = RescoringSettings(
        tenant_calls_per_s=calls_per_s, burst_s=1.0, live_backlog_limit=backlog_limit
    )
    return RateBudget(
        tenant_id=tenant or f"budget-{uuid.uuid4().hex[:8]}",
        settings=settings,
        live=FixedLoad(live),
    )


def test_the_bucket_grants_its_burst_then_makes_callers_wait(services: None) -> None:
    idle = LiveLoad(calls_per_s=0.0, backlog=0)
    bucket = budget(calls_per_s=5, live=idle)
    now = time.monotonic()
    assert all(bucket.acquire(1, until=now) for _ in range(5))  # the burst, at once
    assert not bucket.acquire(1, until=time.monotonic())  # the sixth must wait
    began = time.monotonic()
    assert bucket.acquire(1, until=began + 10)  # ...about a fifth of a second
    assert time.monotonic() - began >= 0.05


def test_workers_of_one_tenant_share_one_bucket(services: None) -> None:
    idle = LiveLoad(calls_per_s=0.0, backlog=0)
    tenant = f"shared-{uuid.uuid4().hex[:8]}"
    first, second = (
        budget(calls_per_s=4, live=idle, tenant=tenant),
        budget(calls_per_s=4, live=idle, tenant=tenant),
    )
    now = time.monotonic()
    assert first.acquire(3, until=now) and not second.acquire(3, until=now)


def test_live_traffic_comes_first(services: None) -> None:
    # The tenant's live turns use the whole budget: re-scoring gets nothing and yields.
    saturated = budget(calls_per_s=10, live=LiveLoad(calls_per_s=10.0, backlog=0))
    assert saturated.spare_rate(saturated.live.sample("t")) == 0.0
    assert not saturated.acquire(1, until=time.monotonic() + 0.3)
    # Live messages waiting on the turn queues: re-scoring takes nothing, whatever is left.
    backlog = budget(calls_per_s=1000, live=LiveLoad(calls_per_s=0.0, backlog=5))
    assert not backlog.acquire(1, until=time.monotonic() + 0.3)
    # Live turns slowing down (of any tenant): re-scoring takes nothing.
    slow = budget(calls_per_s=1000, live=LiveLoad(calls_per_s=0.0, backlog=0, latency_s=9.0))
    assert not slow.acquire(1, until=time.monotonic() + 0.3)
    # Half the budget used live: re-scoring refills at the other half.
    half = budget(calls_per_s=10, live=LiveLoad(calls_per_s=5.0, backlog=0))
    assert half.spare_rate(half.live.sample("t")) == 5.0


def test_live_arrivals_of_the_tenant_are_seen(workers: None) -> None:
    tenant = new_tenant()
    settings = RescoringSettings(live_window_s=120, live_calls_per_turn=3, live_sample_s=0.01)
    live = ObservedLiveLoad(settings)
    quiet = live.sample(tenant).calls_per_s
    ids = [enqueue_turn(tenant, f"c{i}", "How much does the Growth plan cost?") for i in range(4)]
    for turn_id in ids:
        wait_for_turn(turn_id, timeout=30)
    time.sleep(0.05)
    busy = live.sample(tenant).calls_per_s
    assert quiet == 0.0 and busy == pytest.approx(4 * 3 / 120)
    assert live.sample(f"other-{tenant}").calls_per_s == 0.0  # per tenant


def test_live_latency_is_estimated_from_turns_in_flight_and_arrivals() -> None:
    # 50 turns in flight while 100 arrived in 5 s (20/s): each spends about 2.5 s.
    assert estimated_latency_s(in_flight=50, arrivals=100, window_s=5) == 2.5
    assert estimated_latency_s(in_flight=3, arrivals=0, window_s=5) == 0.0  # stuck, not busy


def explain(conn: Connection, query: Select[int]) -> str:
    """The plan of the statement the sampler runs, with its parameters as it sends them."""
    compiled = query.compile(dialect=conn.dialect)
    rows = conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params).scalars()
    return "\n".join(rows)


def test_both_arrival_counts_read_an_index_range_on_a_populated_table(services: None) -> None:
    # 100k turns over the past four days, a handful in the last five seconds: the counts
    # the sampler runs twice a second must read those few, not the table.
    tenant = new_tenant(with_demo_kb=False)
    with get_engine().connect() as conn:
        conversation = uuid.uuid4()
        conn.execute(
            text("INSERT INTO conversations (id, tenant_id, external_id) VALUES (:c, :t, 'x')"),
            {"c": conversation, "t": tenant},
        )
        conn.execute(
            text(
                "INSERT INTO turns (id, tenant_id, conversation_id, seq, message, topology, "
                "status, accepted_at, created_at) "
                "SELECT gen_random_uuid(), :t, :c, g, 'message', 'parallel', 'completed', 0, "
                "now() - make_interval(secs => g * 3.5) FROM generate_series(1, 100000) g"
            ),
            {"t": tenant, "c": conversation},
        )
        conn.execute(text("ANALYZE turns"))
        since = datetime.now(UTC) - timedelta(seconds=5)
        every_tenant = explain(conn, arrivals_query(since))
        one_tenant = explain(conn, arrivals_query(since, tenant_id=tenant))
        conn.rollback()  # the rows, and the statistics ANALYZE took of them
    assert "ix_turns_created" in every_tenant and "Seq Scan" not in every_tenant, every_tenant
    # (the planner may read either index for one tenant: both hold the range)
    assert "Index" in one_tenant and "Seq Scan" not in one_tenant, one_tenant


@pytest.fixture
def starved_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A tenant budget of one call every two seconds, and a one-second time slice."""
    monkeypatch.setenv("CHORDLINE_RESCORE_TENANT_CALLS_PER_S", "0.5")
    monkeypatch.setenv("CHORDLINE_RESCORE_BATCH_SLICE_S", "1")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def test_a_batch_out_of_budget_yields_its_worker_and_requeues(
    services: None, starved_budget: None
) -> None:
    tenant = history_tenant(6, per_conversation=3)
    queued = rescoring_queue_length()
    started = start_run(RunRequest(tenant_id=tenant, batch_size=6))
    assert rescoring_queue_length() == queued + 1
    # Run the batch here (no rescoring worker listens in this module): the burst pays for
    # the first turn's two calls; the second would wait four seconds, past the slice.
    outcome = score_batch(started.run_id, 0)
    assert (outcome.end, outcome.scored) == (BatchEnd.YIELDED, 1)
    assert read_progress(started.run_id).done == 1
    assert rescoring_queue_length() == queued + 2  # re-enqueued itself for the rest
