"""`chordline rescore bench`: re-scoring throughput, and what a full-speed run costs live turns.

1. Throughput: a synthetic history of ``turns`` finished turns (tenant ``bench-rescore``),
   re-scored by one rescoring worker (as the Procfile runs it) with zero-latency simulated
   providers; turns per minute from the run's creation to its completion.
2. Live p99: `chordline bench` (the same ``run_bench``: open-loop Poisson arrivals, both
   topologies, simulated stage latencies) three times: without re-scoring, with a
   full-speed re-scoring run of that history alongside, and without again. The increase
   is taken over the mean of the two runs without, so drift on the host shows up as a
   difference between them rather than as an effect of re-scoring.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from shared.counts import counted
from shared.db.models import Tenant, Turn
from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant
from shared.kb.ingest import ingest_paths
from shared.providers.registry import get_providers
from shared.rescoring.runs import RunStatus, cancel_run, read_progress, start_run
from shared.rescoring.selection import RunRequest
from shared.tools.bench.turns import run_bench
from shared.tools.demo.conversation import DEMO_KB
from shared.tools.stack.procfile import running_workers
from shared.tools.synthetic.rescoring import generate_history

BENCH_TENANT = "bench-rescore"
ZERO_LATENCY_ENV = {"CHORDLINE_PROVIDERS": "simulated", "CHORDLINE_SIMULATED_LATENCY_SCALE": "0"}


def prepare_history_tenant(tenant_id: str) -> bool:
    """Create the tenant with the demo knowledge base unless it exists; True if created."""
    with session_scope() as session:
        exists = session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is not None
        if not exists:
            ensure_tenant(session, tenant_id=tenant_id, name=f"{tenant_id} (synthetic history)")
    if not exists:
        ingest_paths([DEMO_KB], tenant_id=tenant_id, embedder=get_providers().embedder)
    return not exists


def ensure_history(tenant_id: str, turns: int) -> int:
    """At least ``turns`` finished turns in the tenant; returns how many it has."""
    prepare_history_tenant(tenant_id)
    with session_scope() as session:
        have = session.scalar(
            select(func.count()).select_from(Turn).where(Turn.tenant_id == tenant_id)
        )
    if (have or 0) < turns:
        generate_history(tenant_id=tenant_id, turns=turns - (have or 0))
    return max(turns, have or 0)


def wait_for_run(run_id: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while read_progress(run_id).status is RunStatus.RUNNING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rescoring run {run_id} did not finish within {timeout_s:.0f} s")
        time.sleep(0.5)


def measure_throughput(tenant_id: str) -> dict[str, Any]:
    started = start_run(RunRequest(tenant_id=tenant_id))
    wait_for_run(started.run_id, timeout_s=3600)
    progress = read_progress(started.run_id)
    assert progress.finished_at is not None
    seconds = (progress.finished_at - progress.created_at).total_seconds()
    return {
        "run": started.run_id,
        "turns": progress.done,
        "seconds": round(seconds, 2),
        "turns_per_minute": round(progress.done / seconds * 60, 1),
    }


def _live(rate: float, duration_s: float, console: Console | None, label: str) -> dict[str, Any]:
    if console:
        console.print(f"[bold]live bench, {label}[/]")
    return run_bench(rate=rate, duration_s=duration_s, seed=7, progress=console).summary


def measure_live_p99(
    tenant_id: str, *, rate: float, duration_s: float, console: Console | None
) -> dict[str, Any]:
    before = _live(rate, duration_s, console, "without re-scoring")
    started = start_run(RunRequest(tenant_id=tenant_id))
    time.sleep(2.0)  # the run is at full speed before live arrivals begin
    during = _live(rate, duration_s, console, "with a full-speed re-scoring run alongside")
    progress = read_progress(started.run_id)
    if progress.status is RunStatus.RUNNING:
        progress = cancel_run(started.run_id)
    after = _live(rate, duration_s, console, "without re-scoring, again")
    result: dict[str, Any] = {
        "without": before,
        "with": during,
        "without_again": after,
        "rescoring_during_live": {
            "run": started.run_id,
            "turns_scored": progress.done,
            "of": progress.total,
        },
    }
    for topology in ("parallel", "sequential"):
        base = (before[topology]["latency_ms"]["p99"] + after[topology]["latency_ms"]["p99"]) / 2
        loaded = during[topology]["latency_ms"]["p99"]
        result[f"{topology}_p99_increase"] = round(loaded / base - 1, 4)
    return result


def run_rescore_bench(
    *, turns: int, rate: float, duration_s: float, progress: Console | None = None
) -> dict[str, Any]:
    have = ensure_history(BENCH_TENANT, turns)
    if progress:
        progress.print(f"tenant {BENCH_TENANT!r}: {counted(have, 'turn', grouped=True)} of history")
    with running_workers(["rescoring"], env_overrides=ZERO_LATENCY_ENV):
        throughput = measure_throughput(BENCH_TENANT)
        if progress:
            progress.print(f"throughput: {throughput['turns_per_minute']:,.0f} turns/min")
        live = measure_live_p99(BENCH_TENANT, rate=rate, duration_s=duration_s, console=progress)
    return {"history_turns": have, "throughput": throughput, "live": live, "rate": rate}


def print_rescore_bench(result: dict[str, Any], console: Console) -> None:
    t = result["throughput"]
    console.print(
        f"re-scoring throughput: [bold]{t['turns_per_minute']:,.0f} turns/min[/] "
        f"({t['turns']:,} turns in {t['seconds']:.1f} s, zero-latency simulated providers)"
    )
    live = result["live"]
    table = Table(title=f"live latency at {result['rate']} turns/s (ms; p50 / p95 / p99)")
    for column in ("topology", "without", "with re-scoring", "without, again", "p99 increase"):
        table.add_column(column)
    for topology in ("parallel", "sequential"):

        def fmt(run: dict[str, Any], topology: str = topology) -> str:
            ms = run[topology]["latency_ms"]
            return " / ".join(f"{ms[p]:,.0f}" for p in ("p50", "p95", "p99"))

        table.add_row(
            topology,
            fmt(live["without"]),
            fmt(live["with"]),
            fmt(live["without_again"]),
            f"{live[f'{topology}_p99_increase']:+.1%}",
        )
    console.print(table)
    during = live["rescoring_during_live"]
    console.print(
        f"re-scoring alongside live traffic scored {during['turns_scored']:,} of "
        f"{during['of']:,} turns before it was cancelled"
    )
