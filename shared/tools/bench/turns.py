"""`chordline bench`: an open-loop benchmark of the topologies, beside a bare Celery chord.

Turns arrive as a Poisson process (exponential gaps at the given rate), so producers never
fire in coordinated bursts and a slow turn cannot hold back the next arrival. Latency runs
from a turn's scheduled arrival to the commit of its reply, so client lag counts too.
Stage latencies are simulated from the default stage times and seeded by the message, and
every system receives the same messages at the same offsets: they do identical simulated
work.

overhead = latency - the ideal critical path of that turn's own simulated stages:
parallel max(orchestrator, retrieval) + agent; sequential orchestrator + retrieval + agent.

With ``baseline``, a bare Celery chord of the same shape (bare_chord.py) runs first
on the same Redis with the same arrivals, stage times and pool sizes, and no Postgres: the
yardstick for what chordline itself costs per turn. Each system's processes are sampled
for CPU time over its run window (cpu_time.py): milliseconds per turn per process
kind.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from shared.client import enqueue_turn
from shared.config import get_settings
from shared.counts import counted
from shared.db.models import Turn, TurnSpan
from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant
from shared.dispatch import flush_dispatch
from shared.errors import InvalidInput
from shared.kb.ingest import ingest_paths
from shared.providers.registry import get_providers
from shared.redis_conn import get_redis
from shared.schemas import TERMINAL_STATUSES, Topology
from shared.tools.bench import bare_chord
from shared.tools.bench.cpu_time import CpuMeter, Processes, listener_pid, ms_per_unit
from shared.tools.bench.overhead_hops import HOPS, chordline_hops, mean_hops
from shared.tools.bench.redis_forks import compact_append_only_file, forks, forks_between
from shared.tools.bench.wal_volume import WalVolume, wal_written
from shared.tools.demo.conversation import DEMO_KB
from shared.tools.stack.processes import ProcessGroup
from shared.tools.stack.procfile import TURN_PROCESSES, running_workers
from shared.tools.stats import percentiles

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
WARM_UP_FIRST_INDEX = 1_000_000  # warm-up turns get messages of their own
ROUND_S = 10.0
MAX_ROUNDS = 100
DRAIN_TIMEOUT_S = 120.0
BASELINE = "baseline"
TOPOLOGIES = (Topology.PARALLEL, Topology.SEQUENTIAL)
HTTP_SUFFIX = "-http"  # the same topology, its turns posted through the HTTP API
SYSTEMS = (
    BASELINE,
    *(name for t in TOPOLOGIES for name in (t.value, f"{t.value}{HTTP_SUFFIX}")),
)
HTTP_RATE_LIMIT = 1_000_000  # the bench's key is never the limit


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


def bench_message(index: int) -> str:
    return f"{QUESTIONS[index % len(QUESTIONS)]} (ref {index})"


# The bench's tenants go through admission like any other (its round trip is part of what
# a turn costs), with limits no rate the bench accepts can reach.
BENCH_ADMISSION = {"max_in_flight": 100_000, "turns_per_s": 100_000, "burst": 1_000_000}


def prepare_bench_tenants() -> dict[Topology, str]:
    tenants = {Topology.PARALLEL: "bench-parallel", Topology.SEQUENTIAL: "bench-sequential"}
    for topology, tenant in tenants.items():
        with session_scope() as session:
            ensure_tenant(
                session,
                tenant_id=tenant,
                settings={"topology": topology.value, "admission": BENCH_ADMISSION},
            )
        ingest_paths([DEMO_KB], tenant_id=tenant, embedder=get_providers().embedder)
    return tenants


Submit = Callable[[int, str], str]  # (index, message) -> turn id


def drive(offsets: list[float], submit: Submit, *, first_index: int = 0) -> list[Arrival]:
    """Submit one turn per offset on the open-loop schedule; turn ``i`` gets message
    ``first_index + i``."""
    arrivals = []
    wall_start, clock_start = time.time() + 0.2, time.perf_counter() + 0.2
    for index, offset in enumerate(offsets, start=first_index):
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
                .where(Turn.id.in_(ids), Turn.status.notin_([s.value for s in TERMINAL_STATUSES]))
                .limit(1)
            )
        if open_turns is None:
            return
        time.sleep(0.5)


def wait_until_bare_finished(arrivals: list[Arrival], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    ids = [a.turn_id for a in arrivals]
    while not bare_chord.all_finished(ids) and time.monotonic() < deadline:
        time.sleep(0.5)


def ideal_ms(topology: Topology, simulated: dict[str, float]) -> float:
    orch, research, agent = (simulated.get(s, 0.0) for s in ("orchestrator", "researcher", "agent"))
    if topology is Topology.SEQUENTIAL:
        return orch + research + agent
    return max(orch, research) + agent


def busy_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds during which at least one turn was in flight. With rounds, a system's turns
    come in windows with other systems' rounds between them, which must not count."""
    total, covered_to = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > covered_to:
            total += end - max(start, covered_to)
            covered_to = end
    return total


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
    intervals = [(a.scheduled_at, ended[a.turn_id][0]) for a in arrivals if a.turn_id in ended]
    summary = {
        "latency_ms": percentiles(samples.latency_ms),
        "overhead_ms": percentiles(samples.overhead_ms),
        "enqueue_ms": percentiles([a.enqueue_ms for a in arrivals]),
        "in_flight_mean": round(sum(samples.latency_ms) / 1000 / max(busy_s(intervals), 1e-9), 1),
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


def _server_kinds() -> dict[str, Processes]:
    """Postgres and Redis, when they run on this machine."""
    settings = get_settings()
    kinds = {}
    for kind, url in (("postgres", settings.database_url), ("redis", settings.redis_url)):
        pid = listener_pid(url)
        if pid is not None:
            kinds[kind] = Processes((pid,))
    return kinds


@dataclass
class System:
    """One of the systems a run compares: how to submit a turn, wait for turns, read when
    they ended, and which processes serve it."""

    name: str
    submit: Submit
    wait: Callable[[list[Arrival]], None]
    ended: Callable[[list[Arrival]], dict[str, tuple[float, float]]]
    processes: dict[str, Processes]
    hops: Callable[[dict[str, float]], list[dict[str, float]]] | None = None
    writes_wal: bool = False  # chordline's systems: Postgres WAL is metered over their runs
    arrivals: list[Arrival] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wal: WalVolume | None = None

    def run(self, offsets: list[float], *, first_index: int) -> None:
        """Drive ``offsets`` and wait for every turn to end, metering CPU (and WAL)
        meanwhile."""
        meter = CpuMeter(self.processes)
        wal_before = wal_written() if self.writes_wal else None
        meter.start()
        arrivals = drive(offsets, self.submit, first_index=first_index)
        self.wait(arrivals)
        for kind, seconds in meter.stop().items():
            self.cpu_s[kind] = self.cpu_s.get(kind, 0.0) + seconds
        if wal_before is not None and (wal_after := wal_written()) is not None:
            self.wal = (self.wal or WalVolume()) + (wal_after - wal_before)
        self.arrivals.extend(arrivals)


def _chordline_systems(
    group: ProcessGroup, tag: str, topologies: tuple[Topology, ...] = TOPOLOGIES
) -> list[System]:
    tenants = prepare_bench_tenants()
    processes = {
        "client": Processes((os.getpid(),), descendants=False),
        **{name: Processes((group.processes[name].pid,)) for name in TURN_PROCESSES},
        **_server_kinds(),
    }

    def wait(arrivals: list[Arrival]) -> None:
        flush_dispatch()
        wait_until_ended([a.turn_id for a in arrivals], DRAIN_TIMEOUT_S)

    return [
        System(
            name=topology.value,
            submit=chordline_submit(tenants[topology], f"{tag}-{topology.value}"),
            wait=wait,
            ended=functools.partial(chordline_ended, topology),
            processes=processes,
            hops=chordline_hops if topology is Topology.PARALLEL else None,
            writes_wal=True,
        )
        for topology in topologies
    ]


def _baseline_system(group: ProcessGroup) -> System:
    bare_chord.forget_finished()
    servers = _server_kinds()
    processes = {
        "client": Processes((os.getpid(),), descendants=False),
        **{
            name.removeprefix(bare_chord.QUEUE_PREFIX): Processes((process.pid,))
            for name, process in group.processes.items()
        },
        **({"redis": servers["redis"]} if "redis" in servers else {}),
    }
    return System(
        name=BASELINE,
        submit=bare_submit,
        wait=lambda arrivals: wait_until_bare_finished(arrivals, DRAIN_TIMEOUT_S),
        ended=lambda arrivals: bare_chord.finished_turns(),
        processes=processes,
        hops=bare_chord.finished_hops,
    )


def segments(offsets: list[float], rounds: int) -> list[list[float]]:
    """The arrival schedule cut into ``rounds`` consecutive parts, each starting at 0."""
    if not offsets:
        return [[] for _ in range(rounds)]
    span = offsets[-1] + 1e-9
    parts: list[list[float]] = [[] for _ in range(rounds)]
    for offset in offsets:
        parts[min(rounds - 1, int(offset / span * rounds))].append(offset)
    return [[o - i * span / rounds for o in part] for i, part in enumerate(parts)]


def bench_log_dir() -> Any:
    return get_settings().data_dir / "logs" / "bench"


def default_rounds(duration_s: float) -> int:
    """Rounds of about ten seconds of arrivals each."""
    return max(1, round(duration_s / ROUND_S))


def run_bench(
    *,
    rate: float,
    duration_s: float,
    seed: int,
    baseline: bool = False,
    rounds: int | None = None,
    topologies: tuple[Topology, ...] = TOPOLOGIES,
    via_http: bool = False,
    progress: Console | None = None,
    compact_redis: bool = False,
) -> BenchRun:
    """Every system gets the same arrivals. The schedule is cut into rounds, and the
    systems take turns round by round (each round in a rotated order, each system's turns
    drained before the next system starts), so that a machine whose speed drifts during
    the run favours none of them. With ``via_http``, each topology also takes the same
    arrivals posted through the HTTP API (a `web` process from the Procfile), as
    ``<topology>-http``. With ``compact_redis`` (chordline's own embedded server), Redis
    rewrites its append-only file first, so that no rewrite forks it during the rounds;
    the forks there were anyway are counted (``redis_forks``, see redis_forks.py)."""
    offsets = poisson_offsets(rate, duration_s, seed)  # checks the load before anything runs
    rounds = check_rounds(rounds if rounds is not None else default_rounds(duration_s))
    tag = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        chordline = stack.enter_context(
            running_workers(TURN_PROCESSES, env_overrides=SIMULATED_ENV, log_dir=bench_log_dir())
        )
        systems = _chordline_systems(chordline, tag, topologies)
        if via_http:
            from shared.tools.bench.via_http import http_systems, running_web

            web = stack.enter_context(running_web(log_dir=bench_log_dir()))
            systems += http_systems(systems, web)
        if baseline:
            commands = bare_chord.worker_commands()
            bare = stack.enter_context(
                running_workers(
                    list(commands),
                    commands=commands,
                    env_overrides=SIMULATED_ENV,
                    log_dir=bench_log_dir(),
                )
            )
            systems.insert(0, _baseline_system(bare))
            stack.callback(bare_chord.release_results)
        if compact_redis:
            compact_append_only_file(get_redis())
        _warm_up(systems, rate, tag)
        forks_before = forks(get_redis())
        stack.callback(gc.unfreeze)
        first_index = 0
        for number, part in enumerate(segments(offsets, rounds)):
            order = systems[number % len(systems) :] + systems[: number % len(systems)]
            for system in order:
                _settle_heap()
                _announce(progress, system.name, part, rate, number, rounds)
                system.run(part, first_index=first_index)
            first_index += len(part)
        results = {system.name: (system, system.ended(system.arrivals)) for system in systems}
        hops = {s.name: mean_hops(s.hops(_arrived_at(s.arrivals))) for s in systems if s.hops}
        fork_window = forks_between(forks_before, forks(get_redis()))
    run = _bench_result(rate, len(offsets), rounds, results)
    run.summary["overhead_hops_ms"] = hops
    if fork_window is not None:
        run.summary["redis_forks"] = fork_window
    return run


def _settle_heap() -> None:
    """Before each round, everything this process holds so far leaves the cyclic garbage
    collector's view (``gc.freeze``), so that no full collection of it pauses the round.

    This process publishes every system's turns. Its heap grows over a run (the bare
    chord's pending results among it), and a full collection scans all of it with the GIL
    held: 20-90 ms here, during which no turn of the system running could be published.
    Frozen, the objects of earlier rounds are never scanned again; the round's own are, as
    any client's would be. (chordline's workers freeze what they made at start-up for the
    same reason, workers/lifecycle.py; the bare chord's workers are left as Celery runs them.)
    """
    gc.collect()
    gc.freeze()


def _arrived_at(arrivals: list[Arrival]) -> dict[str, float]:
    return {arrival.turn_id: arrival.scheduled_at for arrival in arrivals}


def _warm_up(systems: list[System], rate: float, tag: str) -> None:
    """Each system serves a couple of seconds of arrivals first, unmeasured: pools fill."""
    for system in systems:
        warm = System(
            name=system.name,
            submit=system.submit,
            wait=system.wait,
            ended=system.ended,
            processes={},
        )
        warm.run(_warm_up_offsets(rate), first_index=WARM_UP_FIRST_INDEX)
    if any(system.name == BASELINE for system in systems):
        bare_chord.forget_finished()


def _bench_result(
    rate: float, turns: int, rounds: int, results: dict[str, tuple[System, Any]]
) -> BenchRun:
    summary: dict[str, Any] = {"rate": rate, "rounds": rounds}
    samples: dict[str, Samples] = {}
    cpu_ms: dict[str, dict[str, float]] = {}
    for name, (system, ended) in results.items():
        summary[name], samples[name] = summarise(system.arrivals, ended)
        cpu_ms[name] = ms_per_unit(system.cpu_s, turns)
    if "parallel" in summary and "sequential" in summary:
        par, seq = summary["parallel"], summary["sequential"]
        summary["ideal_saving_ms"] = round(seq["_mean_ideal_ms"] - par["_mean_ideal_ms"], 1)
        summary["measured_saving_ms"] = round(seq["_mean_latency_ms"] - par["_mean_latency_ms"], 1)
    for name in results:
        summary[name].pop("_mean_ideal_ms")
        summary[name].pop("_mean_latency_ms")
    summary["cpu_ms_per_turn"] = cpu_ms
    wal = {n: s.wal.per_turn(turns) for n, (s, _) in results.items() if s.wal is not None}
    if wal:
        summary["wal_per_turn"] = wal
    if BASELINE in results and "parallel" in results:
        summary["vs_baseline"] = versus_baseline(summary)
    over_http = {
        name.removesuffix(HTTP_SUFFIX): http_versus_client(summary, name.removesuffix(HTTP_SUFFIX))
        for name in results
        if name.endswith(HTTP_SUFFIX) and name.removesuffix(HTTP_SUFFIX) in results
    }
    if over_http:
        summary["http_vs_client"] = over_http
    return BenchRun(summary=summary, samples=samples)


def http_versus_client(summary: dict[str, Any], topology: str) -> dict[str, float]:
    """What posting through the API adds to the same turns sent with enqueue_turn, in the
    same run: milliseconds of overhead (p50, p99) and of enqueueing (p99), CPU per turn."""
    http, client = summary[f"{topology}{HTTP_SUFFIX}"], summary[topology]
    cpu = summary["cpu_ms_per_turn"]
    return {
        "overhead_p50_ms": round(http["overhead_ms"]["p50"] - client["overhead_ms"]["p50"], 1),
        "overhead_p99_ms": round(http["overhead_ms"]["p99"] - client["overhead_ms"]["p99"], 1),
        "enqueue_p99_ms": round(http["enqueue_ms"]["p99"] - client["enqueue_ms"]["p99"], 1),
        "cpu_ms_per_turn": round(
            cpu[f"{topology}{HTTP_SUFFIX}"]["total"] - cpu[topology]["total"], 1
        ),
    }


def check_rounds(rounds: int) -> int:
    if not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidInput("--rounds", f"is {rounds}; it must be from 1 to {MAX_ROUNDS}")
    return rounds


def _warm_up_offsets(rate: float) -> list[float]:
    return poisson_offsets(rate, WARM_UP_S, seed=1) or [0.0]


def _announce(
    progress: Console | None,
    system: str,
    offsets: list[float],
    rate: float,
    number: int,
    rounds: int,
) -> None:
    if progress:
        duration = offsets[-1] if offsets else 0.0
        progress.print(
            f"round {number + 1}/{rounds}, {system}: {counted(len(offsets), 'turn')} at {rate:g}/s "
            f"over {duration:.0f} s"
        )


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
    if result.get("wal_per_turn"):
        console.print(wal_line(result["wal_per_turn"]))
    if "measured_saving_ms" in result:
        console.print(
            f"saving of parallel over sequential (mean latency): measured "
            f"{result['measured_saving_ms']:,.1f} ms, ideal {result['ideal_saving_ms']:,.1f} ms"
        )
    hops = result.get("overhead_hops_ms", {})
    if hops.get(BASELINE) and hops.get("parallel"):
        console.print(hops_table(hops[BASELINE], hops["parallel"]))
    if "vs_baseline" in result:
        vs = result["vs_baseline"]
        console.print(
            f"parallel / baseline: overhead p50 x{vs['overhead_p50']:.2f}, "
            f"p99 x{vs['overhead_p99']:.2f}, CPU per turn x{vs['cpu_per_turn']:.2f}"
        )
    for topology, extra in result.get("http_vs_client", {}).items():
        console.print(
            f"{topology} through the HTTP API, over enqueue_turn: overhead p50 "
            f"{extra['overhead_p50_ms']:+,.1f} ms, p99 {extra['overhead_p99_ms']:+,.1f} ms, "
            f"enqueue p99 {extra['enqueue_p99_ms']:+,.1f} ms, CPU per turn "
            f"{extra['cpu_ms_per_turn']:+,.1f} ms"
        )


CPU_KINDS = ("client", "web", *TURN_PROCESSES, "postgres", "redis", "total")


def wal_line(wal: dict[str, dict[str, float]]) -> str:
    """Postgres WAL per turn of each system that writes it (wal_volume.py)."""
    parts = [
        f"{name} {figures['bytes'] / 1000:,.1f} kB ({figures['full_page_images']:.2f} "
        "full-page images)"
        for name, figures in wal.items()
        if figures
    ]
    return "Postgres WAL per turn: " + ", ".join(parts)


def hops_table(baseline: dict[str, float], parallel: dict[str, float]) -> Table:
    """Where the overhead goes, hop by hop (overhead_hops.py), beside the bare chord."""
    table = Table(title="Where the overhead goes: mean ms per turn, hop by hop")
    for column in ("hop", BASELINE, "parallel", "difference"):
        table.add_column(column, justify="left" if column == "hop" else "right")
    for hop in (*HOPS, "total"):
        mine = sum(parallel.values()) if hop == "total" else parallel[hop]
        theirs = sum(baseline.values()) if hop == "total" else baseline[hop]
        table.add_row(hop, f"{theirs:.2f}", f"{mine:.2f}", f"{mine - theirs:+.2f}")
    return table


def cpu_table(cpu_ms: dict[str, dict[str, float]], systems: list[str]) -> Table:
    table = Table(title="CPU milliseconds per turn, by process, over each run's window")
    table.add_column("process")
    for system in systems:
        table.add_column(system, justify="right")
    for kind in CPU_KINDS:
        cells = [cpu_ms[system].get(kind) for system in systems]
        table.add_row(kind, *("-" if c is None else f"{c:.1f}" for c in cells))
    return table


PLOT_COLORS = {
    BASELINE: "#7f7f7f",
    "parallel": "#1f77b4",
    "sequential": "#ff7f0e",
    "parallel-http": "#17becf",
    "sequential-http": "#d62728",
}


LOG_TICKS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)


def _plain_log_ticks(axis: Any) -> None:
    """Milliseconds as plain numbers on a log axis (1, 2, 5, 10, ...), not powers of ten."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    axis.xaxis.set_major_locator(FixedLocator(LOG_TICKS_MS))
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())


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
    _plain_log_ticks(right)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.set_ylim(0, 1.0)
        axis.legend(loc="lower right")
    figure.suptitle(f"chordline bench at {run.summary['rate']:g} turns/s")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
