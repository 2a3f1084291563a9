"""`chordline bench`: an open-loop benchmark of the parallel and the sequential topology.

Turns arrive as a Poisson process (exponential gaps at the given rate), so producers never
fire in coordinated bursts and a slow turn cannot hold back the next arrival. Latency runs
from a turn's scheduled arrival to the commit of its reply, so client lag counts too.
Stage latencies are simulated from the default stage times and seeded by the message, and both
topologies receive the same messages at the same offsets: they do identical simulated work.

overhead = latency - the ideal critical path of that turn's own simulated stages:
parallel max(orchestrator, retrieval) + agent; sequential orchestrator + retrieval + agent.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from shared.client import enqueue_turn
from shared.db.models import Turn, TurnSpan
from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant
from shared.demo import DEMO_KB
from shared.dispatch import flush_dispatch
from shared.errors import InvalidInput
from shared.kb.ingest import ingest_paths
from shared.procfile import TURN_PROCESSES, running_workers
from shared.providers.registry import get_providers
from shared.schemas import Topology

QUESTIONS = (
    "How much does the Growth plan cost?",
    "Does Halyard have a REST API and webhooks?",
    "Our barcode scanners stopped syncing, what should we do?",
    "Is customer data encrypted at rest?",
    "We run five warehouses and want to replace spreadsheets.",
    "Can you write a summary email for our CFO?",
    "Does it integrate with NetSuite and Shopify?",
    "Can it connect to our on-prem mainframe?",
)
SIMULATED_ENV = {"CHORDLINE_PROVIDERS": "simulated", "CHORDLINE_SIMULATED_LATENCY_SCALE": "1.0"}
MAX_RATE = 1000.0  # turns per second
MAX_DURATION_S = 3600.0


def check_positive(field: str, value: float, *, limit: float) -> float:
    """A rate or a duration: above 0 (a rate of 0 or below never ends) and at most ``limit``."""
    if not 0 < value <= limit:  # NaN fails too
        raise InvalidInput(field, f"is {value:g}; it must be above 0 and at most {limit:g}")
    return value


@dataclass(frozen=True)
class Arrival:
    turn_id: str
    scheduled_at: float
    enqueue_ms: float


def poisson_offsets(rate: float, duration_s: float, seed: int) -> list[float]:
    check_positive("--rate", rate, limit=MAX_RATE)
    check_positive("--duration", duration_s, limit=MAX_DURATION_S)
    rng = random.Random(seed)
    offsets: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return offsets
        offsets.append(t)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(np.array(values), [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


def prepare_bench_tenants() -> dict[Topology, str]:
    tenants = {Topology.PARALLEL: "bench-parallel", Topology.SEQUENTIAL: "bench-sequential"}
    for topology, tenant in tenants.items():
        with session_scope() as session:
            ensure_tenant(session, tenant_id=tenant, settings={"topology": topology.value})
        ingest_paths([DEMO_KB], tenant_id=tenant, embedder=get_providers().embedder)
    return tenants


def drive(*, tenant: str, offsets: list[float], tag: str) -> list[Arrival]:
    """Enqueue one turn per offset, each in its own conversation, on the open-loop schedule."""
    arrivals = []
    wall_start, clock_start = time.time() + 0.2, time.perf_counter() + 0.2
    for index, offset in enumerate(offsets):
        delay = clock_start + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        message = f"{QUESTIONS[index % len(QUESTIONS)]} (ref {index})"
        began = time.perf_counter()
        turn_id = enqueue_turn(tenant, f"bench-{tag}-{index}", message)
        arrivals.append(Arrival(turn_id, wall_start + offset, (time.perf_counter() - began) * 1000))
    flush_dispatch()
    return arrivals


def wait_until_ended(turn_ids: list[str], timeout_s: float) -> None:
    ids = [uuid.UUID(t) for t in turn_ids]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope() as session:
            open_turns = session.scalar(
                select(Turn.id)
                .where(Turn.id.in_(ids), Turn.status.notin_(["completed", "failed"]))
                .limit(1)
            )
        if open_turns is None:
            return
        time.sleep(0.25)


def ideal_ms(topology: Topology, simulated: dict[str, float]) -> float:
    orch, research, agent = (simulated.get(s, 0.0) for s in ("orchestrator", "researcher", "agent"))
    if topology is Topology.SEQUENTIAL:
        return orch + research + agent
    return max(orch, research) + agent


def measure(topology: Topology, arrivals: list[Arrival]) -> dict[str, Any]:
    ids = [uuid.UUID(a.turn_id) for a in arrivals]
    with session_scope() as session:
        turns = {str(t.id): t for t in session.scalars(select(Turn).where(Turn.id.in_(ids)))}
        simulated: dict[str, dict[str, float]] = {}
        for span in session.scalars(select(TurnSpan).where(TurnSpan.turn_id.in_(ids))):
            simulated.setdefault(str(span.turn_id), {})[span.stage] = span.simulated_ms or 0.0
    latencies, overheads, ideals, errors = [], [], [], 0
    for arrival in arrivals:
        turn = turns.get(arrival.turn_id)
        if (
            turn is None
            or turn.status != "completed"
            or turn.completed_at is None
            or turn.agent_fallback
        ):
            errors += 1
            continue
        latency = (turn.completed_at - arrival.scheduled_at) * 1000
        ideal = ideal_ms(topology, simulated.get(arrival.turn_id, {}))
        latencies.append(latency)
        ideals.append(ideal)
        overheads.append(latency - ideal)
    span_s = (
        (max((t.completed_at or 0) for t in turns.values()) - arrivals[0].scheduled_at)
        if turns
        else 1.0
    )
    return {
        "latency_ms": percentiles(latencies),
        "overhead_ms": percentiles(overheads),
        "enqueue_ms": percentiles([a.enqueue_ms for a in arrivals]),
        "in_flight_mean": round(sum(latencies) / 1000 / max(span_s, 1e-9), 1),
        "turns": len(arrivals),
        "errors": errors,
        "_mean_latency_ms": float(np.mean(latencies)) if latencies else float("nan"),
        "_mean_ideal_ms": float(np.mean(ideals)) if ideals else float("nan"),
    }


def warm_up(tenant: str) -> None:
    ids = [
        enqueue_turn(tenant, f"warmup-{uuid.uuid4().hex[:8]}", QUESTIONS[i % len(QUESTIONS)])
        for i in range(4)
    ]
    flush_dispatch()
    wait_until_ended(ids, 30)


def run_bench(
    *, rate: float, duration_s: float, seed: int, progress: Console | None = None
) -> dict[str, Any]:
    offsets = poisson_offsets(rate, duration_s, seed)  # checks the load before anything runs
    tenants = prepare_bench_tenants()
    tag = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {"rate": rate}
    with running_workers(TURN_PROCESSES, env_overrides=SIMULATED_ENV):
        for topology in (Topology.PARALLEL, Topology.SEQUENTIAL):
            warm_up(tenants[topology])
            if progress:
                progress.print(
                    f"{topology.value}: {len(offsets)} turns at {rate}/s over {duration_s:.0f} s"
                )
            arrivals = drive(
                tenant=tenants[topology], offsets=offsets, tag=f"{tag}-{topology.value}"
            )
            wait_until_ended([a.turn_id for a in arrivals], timeout_s=120)
            result[topology.value] = measure(topology, arrivals)
    par, seq = result["parallel"], result["sequential"]
    result["ideal_saving_ms"] = round(seq.pop("_mean_ideal_ms") - par.pop("_mean_ideal_ms"), 1)
    result["measured_saving_ms"] = round(
        seq.pop("_mean_latency_ms") - par.pop("_mean_latency_ms"), 1
    )
    return result


def print_bench_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"chordline bench at {result['rate']} turns/s (ms; p50 / p95 / p99)")
    for column in ("topology", "latency", "overhead", "enqueue", "in flight", "turns", "errors"):
        table.add_column(column)
    for topology in ("parallel", "sequential"):
        row = result[topology]

        def fmt(key: str, row: dict[str, Any] = row) -> str:
            return " / ".join(f"{row[key][p]:,.1f}" for p in ("p50", "p95", "p99"))

        table.add_row(
            topology,
            fmt("latency_ms"),
            fmt("overhead_ms"),
            fmt("enqueue_ms"),
            f"{row['in_flight_mean']}",
            str(row["turns"]),
            str(row["errors"]),
        )
    console.print(table)
    console.print(
        f"saving of parallel over sequential (mean latency): measured "
        f"{result['measured_saving_ms']:,.1f} ms, ideal {result['ideal_saving_ms']:,.1f} ms"
    )
