"""`chordline bench`: an open-loop benchmark of the topologies, beside a bare Celery chord.

Turns arrive as a Poisson process (exponential gaps at the given rate), so producers never
fire in coordinated bursts and a slow turn cannot hold back the next arrival. Latency runs
from a turn's scheduled arrival to the commit of its reply, so client lag counts too.
Stage latencies are simulated from the default stage times and seeded by the message, and
every system receives the same messages at the same offsets: they do identical simulated
work.

overhead = latency - the ideal critical path of that turn's own simulated stages:
parallel max(orchestrator, retrieval) + agent; sequential orchestrator + retrieval + agent.

With ``baseline``, a bare Celery chord of the same shape (shared/bare_chord.py) runs first
on the same Redis with the same arrivals, stage times and pool sizes, and no Postgres: the
yardstick for what chordline itself costs per turn. Each system's processes are sampled
for CPU time over its run window (shared/cpu_time.py): milliseconds per turn per process
kind.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from shared import bare_chord
from shared.client import enqueue_turn
from shared.config import get_settings
from shared.cpu_time import CpuMeter, Processes, listener_pid, ms_per_unit
from shared.db.models import Turn, TurnSpan
from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant
from shared.demo import DEMO_KB
from shared.dispatch import flush_dispatch
from shared.errors import InvalidInput
from shared.kb.ingest import ingest_paths
from shared.procfile import TURN_PROCESSES, ProcessGroup, running_workers
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
WARM_UP_S = 2.0  # of arrivals at the run's rate before each measured run: pools fill up
DRAIN_TIMEOUT_S = 120.0
BASELINE = "baseline"
SYSTEMS = (BASELINE, Topology.PARALLEL.value, Topology.SEQUENTIAL.value)


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


@dataclass
class Samples:
    """Per-turn figures of one system's run, for the plot."""

    latency_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)


@dataclass
class BenchRun:
    summary: dict[str, Any]
    samples: dict[str, Samples]


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


def bench_message(index: int) -> str:
    return f"{QUESTIONS[index % len(QUESTIONS)]} (ref {index})"


def prepare_bench_tenants() -> dict[Topology, str]:
    tenants = {Topology.PARALLEL: "bench-parallel", Topology.SEQUENTIAL: "bench-sequential"}
    for topology, tenant in tenants.items():
        with session_scope() as session:
            ensure_tenant(session, tenant_id=tenant, settings={"topology": topology.value})
        ingest_paths([DEMO_KB], tenant_id=tenant, embedder=get_providers().embedder)
    return tenants


Submit = Callable[[int, str], str]  # (index, message) -> turn id


def drive(offsets: list[float], submit: Submit) -> list[Arrival]:
    """Submit one turn per offset on the open-loop schedule."""
    arrivals = []
    wall_start, clock_start = time.time() + 0.2, time.perf_counter() + 0.2
    for index, offset in enumerate(offsets):
        delay = clock_start + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        began = time.perf_counter()
        turn_id = submit(index, bench_message(index))
        arrivals.append(Arrival(turn_id, wall_start + offset, (time.perf_counter() - began) * 1000))
    return arrivals


def chordline_submit(tenant: str, tag: str) -> Submit:
    return lambda index, message: enqueue_turn(tenant, f"bench-{tag}-{index}", message)


def bare_submit(index: int, message: str) -> str:
    turn_id = str(uuid.uuid4())
    bare_chord.submit(turn_id, message)
    return turn_id


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
        time.sleep(0.5)


def wait_until_bare_finished(count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while bare_chord.finished_count() < count and time.monotonic() < deadline:
        time.sleep(0.5)


def ideal_ms(topology: Topology, simulated: dict[str, float]) -> float:
    orch, research, agent = (simulated.get(s, 0.0) for s in ("orchestrator", "researcher", "agent"))
    if topology is Topology.SEQUENTIAL:
        return orch + research + agent
    return max(orch, research) + agent


def summarise(
    arrivals: list[Arrival], ended: dict[str, tuple[float, float]]
) -> tuple[dict[str, Any], Samples]:
    """Figures of one run; ``ended`` maps each completed turn to (finished at, ideal ms)."""
    samples = Samples()
    ideals: list[float] = []
    for arrival in arrivals:
        if arrival.turn_id not in ended:
            continue
        finished_at, ideal = ended[arrival.turn_id]
        latency = (finished_at - arrival.scheduled_at) * 1000
        samples.latency_ms.append(latency)
        samples.overhead_ms.append(latency - ideal)
        ideals.append(ideal)
    last = max((finished for finished, _ in ended.values()), default=0.0)
    span_s = last - arrivals[0].scheduled_at if arrivals and ended else 1.0
    summary = {
        "latency_ms": percentiles(samples.latency_ms),
        "overhead_ms": percentiles(samples.overhead_ms),
        "enqueue_ms": percentiles([a.enqueue_ms for a in arrivals]),
        "in_flight_mean": round(sum(samples.latency_ms) / 1000 / max(span_s, 1e-9), 1),
        "turns": len(arrivals),
        "errors": len(arrivals) - len(samples.latency_ms),
        "_mean_latency_ms": float(np.mean(samples.latency_ms)) if ideals else float("nan"),
        "_mean_ideal_ms": float(np.mean(ideals)) if ideals else float("nan"),
    }
    return summary, samples


def chordline_ended(topology: Topology, arrivals: list[Arrival]) -> dict[str, tuple[float, float]]:
    """Completed turns without a fallback reply: (completed at, ideal critical path ms)."""
    ids = [uuid.UUID(a.turn_id) for a in arrivals]
    with session_scope() as session:
        turns = session.execute(
            select(Turn.id, Turn.completed_at).where(
                Turn.id.in_(ids), Turn.status == "completed", Turn.agent_fallback.is_(False)
            )
        ).all()
        simulated: dict[str, dict[str, float]] = {}
        for span in session.execute(
            select(TurnSpan.turn_id, TurnSpan.stage, TurnSpan.simulated_ms).where(
                TurnSpan.turn_id.in_(ids)
            )
        ):
            simulated.setdefault(str(span.turn_id), {})[span.stage] = span.simulated_ms or 0.0
    return {
        str(t.id): (t.completed_at, ideal_ms(topology, simulated.get(str(t.id), {})))
        for t in turns
        if t.completed_at is not None
    }


def _process_kinds(group: ProcessGroup, names: dict[str, str]) -> dict[str, Processes]:
    """The processes to meter: this client, each queue's worker, Postgres and Redis when
    they run on this machine."""
    settings = get_settings()
    kinds = {"client": Processes((os.getpid(),), descendants=False)}
    for name, kind in names.items():
        kinds[kind] = Processes((group.processes[name].pid,))
    for kind, url in (("postgres", settings.database_url), ("redis", settings.redis_url)):
        pid = listener_pid(url)
        if pid is not None:
            kinds[kind] = Processes((pid,))
    return kinds


@contextmanager
def _metered(kinds: dict[str, Processes], into: dict[str, float]) -> Iterator[None]:
    meter = CpuMeter(kinds)
    meter.start()
    yield
    into.update(meter.stop())


def _warm_up_offsets(rate: float) -> list[float]:
    return poisson_offsets(rate, WARM_UP_S, seed=1) or [0.0]


def run_baseline(
    *, rate: float, offsets: list[float], progress: Console | None
) -> tuple[dict[str, Any], Samples, dict[str, float]]:
    commands = bare_chord.worker_commands()
    names = {name: name.removeprefix(bare_chord.QUEUE_PREFIX) for name in commands}
    cpu: dict[str, float] = {}
    with running_workers(
        list(commands), commands=commands, env_overrides=SIMULATED_ENV, log_dir=_log_dir()
    ) as group:
        bare_chord.forget_finished()
        warm = drive(_warm_up_offsets(rate), bare_submit)
        wait_until_bare_finished(len(warm), DRAIN_TIMEOUT_S)
        bare_chord.forget_finished()
        _announce(progress, BASELINE, offsets, rate)
        with _metered(_process_kinds(group, names), cpu):
            arrivals = drive(offsets, bare_submit)
            wait_until_bare_finished(len(arrivals), DRAIN_TIMEOUT_S)
        ended = bare_chord.finished_turns()
        bare_chord.forget_finished()
    summary, samples = summarise(arrivals, ended)
    return summary, samples, cpu


def run_chordline(
    *, rate: float, offsets: list[float], progress: Console | None
) -> dict[Topology, tuple[dict[str, Any], Samples, dict[str, float]]]:
    tenants = prepare_bench_tenants()
    tag = uuid.uuid4().hex[:8]
    runs = {}
    with running_workers(TURN_PROCESSES, env_overrides=SIMULATED_ENV, log_dir=_log_dir()) as group:
        kinds = _process_kinds(group, {name: name for name in TURN_PROCESSES})
        for topology in (Topology.PARALLEL, Topology.SEQUENTIAL):
            tenant = tenants[topology]
            warm = drive(_warm_up_offsets(rate), chordline_submit(tenant, f"{tag}-warm"))
            flush_dispatch()
            wait_until_ended([a.turn_id for a in warm], DRAIN_TIMEOUT_S)
            _announce(progress, topology.value, offsets, rate)
            cpu: dict[str, float] = {}
            with _metered(kinds, cpu):
                arrivals = drive(offsets, chordline_submit(tenant, f"{tag}-{topology.value}"))
                flush_dispatch()
                wait_until_ended([a.turn_id for a in arrivals], DRAIN_TIMEOUT_S)
            summary, samples = summarise(arrivals, chordline_ended(topology, arrivals))
            runs[topology] = (summary, samples, cpu)
    return runs


def _log_dir() -> Any:
    return get_settings().data_dir / "logs" / "bench"


def _announce(progress: Console | None, system: str, offsets: list[float], rate: float) -> None:
    if progress:
        duration = offsets[-1] if offsets else 0.0
        progress.print(f"{system}: {len(offsets)} turns at {rate:g}/s over {duration:.0f} s")


def run_bench(
    *,
    rate: float,
    duration_s: float,
    seed: int,
    baseline: bool = False,
    progress: Console | None = None,
) -> BenchRun:
    offsets = poisson_offsets(rate, duration_s, seed)  # checks the load before anything runs
    summary: dict[str, Any] = {"rate": rate}
    samples: dict[str, Samples] = {}
    cpu_ms: dict[str, dict[str, float]] = {}
    if baseline:
        summary[BASELINE], samples[BASELINE], cpu = run_baseline(
            rate=rate, offsets=offsets, progress=progress
        )
        cpu_ms[BASELINE] = ms_per_unit(cpu, len(offsets))
    for topology, (run, run_samples, cpu) in run_chordline(
        rate=rate, offsets=offsets, progress=progress
    ).items():
        summary[topology.value], samples[topology.value] = run, run_samples
        cpu_ms[topology.value] = ms_per_unit(cpu, len(offsets))
    par, seq = summary["parallel"], summary["sequential"]
    summary["ideal_saving_ms"] = round(seq["_mean_ideal_ms"] - par["_mean_ideal_ms"], 1)
    summary["measured_saving_ms"] = round(seq["_mean_latency_ms"] - par["_mean_latency_ms"], 1)
    for system in SYSTEMS:
        if system in summary:
            summary[system].pop("_mean_ideal_ms")
            summary[system].pop("_mean_latency_ms")
    summary["cpu_ms_per_turn"] = cpu_ms
    if baseline:
        summary["vs_baseline"] = versus_baseline(summary)
    return BenchRun(summary=summary, samples=samples)


def versus_baseline(summary: dict[str, Any]) -> dict[str, float]:
    """Parallel over the bare chord, in the same run: overhead p50 and p99, CPU per turn."""
    par, base = summary["parallel"], summary[BASELINE]
    cpu = summary["cpu_ms_per_turn"]

    def ratio(mine: float, theirs: float) -> float:
        return round(mine / theirs, 2) if theirs > 0 else float("nan")

    return {
        "overhead_p50": ratio(par["overhead_ms"]["p50"], base["overhead_ms"]["p50"]),
        "overhead_p99": ratio(par["overhead_ms"]["p99"], base["overhead_ms"]["p99"]),
        "cpu_per_turn": ratio(cpu["parallel"]["total"], cpu[BASELINE]["total"]),
    }


def print_bench_table(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"chordline bench at {result['rate']:g} turns/s (ms; p50 / p95 / p99)")
    for column in ("system", "latency", "overhead", "enqueue", "CPU/turn", "turns", "errors"):
        table.add_column(column, justify="left" if column == "system" else "right")
    systems = [s for s in SYSTEMS if s in result]
    for system in systems:
        row = result[system]

        def fmt(key: str, row: dict[str, Any] = row) -> str:
            return " / ".join(f"{row[key][p]:,.1f}" for p in ("p50", "p95", "p99"))

        table.add_row(
            system,
            fmt("latency_ms"),
            fmt("overhead_ms"),
            fmt("enqueue_ms"),
            f"{result['cpu_ms_per_turn'][system]['total']:.1f}",
            str(row["turns"]),
            str(row["errors"]),
        )
    console.print(table)
    console.print(cpu_table(result["cpu_ms_per_turn"], systems))
    console.print(
        f"saving of parallel over sequential (mean latency): measured "
        f"{result['measured_saving_ms']:,.1f} ms, ideal {result['ideal_saving_ms']:,.1f} ms"
    )
    if "vs_baseline" in result:
        vs = result["vs_baseline"]
        console.print(
            f"parallel / baseline: overhead p50 x{vs['overhead_p50']:.2f}, "
            f"p99 x{vs['overhead_p99']:.2f}, CPU per turn x{vs['cpu_per_turn']:.2f}"
        )


CPU_KINDS = ("client", *TURN_PROCESSES, "postgres", "redis", "total")


def cpu_table(cpu_ms: dict[str, dict[str, float]], systems: list[str]) -> Table:
    table = Table(title="CPU milliseconds per turn, by process, over each run's window")
    table.add_column("process")
    for system in systems:
        table.add_column(system, justify="right")
    for kind in CPU_KINDS:
        cells = [cpu_ms[system].get(kind) for system in systems]
        table.add_row(kind, *("-" if c is None else f"{c:.1f}" for c in cells))
    return table


PLOT_COLORS = {BASELINE: "#7f7f7f", "parallel": "#1f77b4", "sequential": "#ff7f0e"}


def plot_cdfs(run: BenchRun, path: Any) -> None:
    """Latency and overhead CDFs of every system in the run, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for system in SYSTEMS:
        samples = run.samples.get(system)
        if samples is None or not samples.latency_ms:
            continue
        for axis, values in ((left, samples.latency_ms), (right, samples.overhead_ms)):
            ordered = np.sort(np.array(values))
            share = np.arange(1, len(ordered) + 1) / len(ordered)
            axis.step(ordered, share, where="post", label=system, color=PLOT_COLORS[system])
    left.set(xlabel="latency, arrival to reply committed (ms)", ylabel="share of turns")
    right.set(xlabel="overhead over the ideal critical path (ms, log)", xscale="log")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.set_ylim(0, 1.0)
        axis.legend(loc="lower right")
    figure.suptitle(f"chordline bench at {run.summary['rate']:g} turns/s")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
