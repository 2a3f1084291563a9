"""`chordline bench --tenants N --skew K`: many tenants on one fleet, one of them flooding.

Each tenant's turns arrive as its own Poisson process; tenant 0 (the noisy one) sends K
times the share of each of the others (the quiet ones), and the shares add up to the
given rate. The same command also runs the quiet tenants' arrivals alone (the solo run):
the same offsets and messages, so the same simulated work. The two runs take turns round
by round (each round in a rotated order, each drained before the next), so a host whose
speed drifts favours neither. Latency runs from a turn's scheduled arrival to the commit of
its reply, held time included; a turn refused by its tenant's admission limits is counted,
not timed.

The figure that matters: the quiet tenants' p99 beside their solo p99 (``quiet_vs_solo``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant, validate_settings
from shared.dispatch import flush_dispatch
from shared.errors import AdmissionRefused, InvalidInput
from shared.kb.ingest import ingest_paths
from shared.providers.registry import get_providers
from shared.schemas import Topology
from shared.tools.bench.turns import (
    SIMULATED_ENV,
    Arrival,
    bench_log_dir,
    bench_message,
    check_positive,
    check_rounds,
    chordline_ended,
    default_rounds,
    poisson_offsets,
    summarise,
    wait_until_ended,
)
from shared.tools.demo.conversation import DEMO_KB
from shared.tools.stack.procfile import TURN_PROCESSES, running_workers

MAX_TENANTS = 50
MAX_SKEW = 1000.0
DRAIN_TIMEOUT_S = 180.0
WARM_UP_S = 2.0
SOLO, MIXED = "solo", "mixed"


@dataclass(frozen=True)
class Planned:
    """One turn of the schedule: whose, when, and which message."""

    tenant: int
    offset: float
    index: int


def tenant_rates(rate: float, tenants: int, skew: float) -> list[float]:
    """Turns per second per tenant: tenant 0 has ``skew`` shares, every other one one."""
    unit = rate / (skew + tenants - 1)
    return [unit * skew] + [unit] * (tenants - 1)


def schedule(rate: float, duration_s: float, tenants: int, skew: float, seed: int) -> list[Planned]:
    """Every tenant's Poisson arrivals, merged in time order; message ``index`` follows it."""
    if not 2 <= tenants <= MAX_TENANTS:
        raise InvalidInput("--tenants", f"is {tenants}; it must be from 2 to {MAX_TENANTS}")
    check_positive("--skew", skew, limit=MAX_SKEW)
    merged = [
        (offset, tenant)
        for tenant, tenant_rate in enumerate(tenant_rates(rate, tenants, skew))
        for offset in poisson_offsets(tenant_rate, duration_s, seed + tenant)
    ]
    merged.sort()
    return [Planned(tenant, offset, index) for index, (offset, tenant) in enumerate(merged)]


def rounds_of(planned: list[Planned], duration_s: float, rounds: int) -> list[list[Planned]]:
    """The schedule cut into ``rounds`` windows of equal length, each starting at 0."""
    width = duration_s / rounds
    parts: list[list[Planned]] = [[] for _ in range(rounds)]
    for turn in planned:
        number = min(rounds - 1, int(turn.offset / width))
        parts[number].append(Planned(turn.tenant, turn.offset - number * width, turn.index))
    return parts


@dataclass(frozen=True)
class Sent:
    tenant: int
    arrival: Arrival | None  # None: refused by the tenant's admission limits


Submit = Callable[[Planned], str | None]


def drive(planned: list[Planned], submit: Submit) -> list[Sent]:
    """Submit each turn at its offset (open loop: a slow submit never delays the schedule
    of the turns after it by more than its own lateness)."""
    sent: list[Sent] = []
    wall_start, clock_start = time.time() + 0.2, time.perf_counter() + 0.2
    for turn in planned:
        delay = clock_start + turn.offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        began = time.perf_counter()
        turn_id = submit(turn)
        enqueue_ms = (time.perf_counter() - began) * 1000
        arrival = Arrival(turn_id, wall_start + turn.offset, enqueue_ms) if turn_id else None
        sent.append(Sent(turn.tenant, arrival))
    return sent


def submitter(names: list[str], tag: str) -> Submit:
    from shared.client import enqueue_turn

    def submit(turn: Planned) -> str | None:
        try:
            return enqueue_turn(
                names[turn.tenant], f"bench-{tag}-{turn.index}", bench_message(turn.index)
            )
        except AdmissionRefused:
            return None

    return submit


def prepare_tenants(tenants: int, settings: dict[str, Any]) -> list[str]:
    """bench-noisy and bench-quiet-1..N-1, with the demo knowledge base and ``settings``."""
    validate_settings(settings)
    names = ["bench-noisy", *(f"bench-quiet-{i}" for i in range(1, tenants))]
    for name in names:
        with session_scope() as session:
            ensure_tenant(session, tenant_id=name, settings=settings)
        ingest_paths([DEMO_KB], tenant_id=name, embedder=get_providers().embedder)
    return names


def run_tenants_bench(
    *,
    rate: float,
    duration_s: float,
    tenants: int,
    skew: float,
    seed: int,
    rounds: int | None = None,
    settings: dict[str, Any] | None = None,
    progress: Console | None = None,
) -> dict[str, Any]:
    planned = schedule(rate, duration_s, tenants, skew, seed)  # checks before anything runs
    rounds = check_rounds(rounds if rounds is not None else default_rounds(duration_s))
    tag = uuid.uuid4().hex[:8]
    runs: dict[str, list[Sent]] = {SOLO: [], MIXED: []}
    with running_workers(TURN_PROCESSES, env_overrides=SIMULATED_ENV, log_dir=bench_log_dir()):
        names = prepare_tenants(tenants, settings or {})
        warm = schedule(rate, WARM_UP_S, tenants, skew, seed + 1000)
        _run(warm, submitter(names, f"{tag}-warm"))
        for number, part in enumerate(rounds_of(planned, duration_s, rounds)):
            order = (SOLO, MIXED) if number % 2 == 0 else (MIXED, SOLO)
            for system in order:
                turns = part if system == MIXED else [t for t in part if t.tenant != 0]
                if progress:
                    progress.print(
                        f"round {number + 1}/{rounds}, {system}: {len(turns)} turns "
                        f"({sum(1 for t in turns if t.tenant == 0)} of them the noisy tenant's)"
                    )
                runs[system].extend(_run(turns, submitter(names, f"{tag}-{system}")))
    return summary(runs, names=names, rate=rate, skew=skew, rounds=rounds)


def _run(turns: list[Planned], submit: Submit) -> list[Sent]:
    sent = drive(turns, submit)
    flush_dispatch()
    wait_until_ended([s.arrival.turn_id for s in sent if s.arrival], DRAIN_TIMEOUT_S)
    return sent


def _per_tenant(sent: list[Sent], tenant: int) -> dict[str, Any]:
    arrivals = [s.arrival for s in sent if s.tenant == tenant and s.arrival]
    figures, _ = summarise(arrivals, chordline_ended(Topology.PARALLEL, arrivals))
    figures.pop("_mean_latency_ms")
    figures.pop("_mean_ideal_ms")
    figures["refused"] = sum(1 for s in sent if s.tenant == tenant and s.arrival is None)
    return figures


def _quiet(sent: list[Sent]) -> dict[str, Any]:
    quiet = [Sent(1, s.arrival) for s in sent if s.tenant != 0]
    return _per_tenant(quiet, 1)


def summary(
    runs: dict[str, list[Sent]], *, names: list[str], rate: float, skew: float, rounds: int
) -> dict[str, Any]:
    mixed = {name: _per_tenant(runs[MIXED], i) for i, name in enumerate(names)}
    solo = {name: _per_tenant(runs[SOLO], i) for i, name in enumerate(names) if i}
    quiet_mixed, quiet_solo = _quiet(runs[MIXED]), _quiet(runs[SOLO])

    def ratio(key: str, q: str) -> float:
        theirs = quiet_solo[key][q]
        return round(quiet_mixed[key][q] / theirs, 3) if theirs > 0 else float("nan")

    return {
        "rate": rate,
        "skew": skew,
        "rounds": rounds,
        "tenant_rates": [round(r, 3) for r in tenant_rates(rate, len(names), skew)],
        MIXED: mixed,
        SOLO: solo,
        "quiet": {MIXED: quiet_mixed, SOLO: quiet_solo},
        "quiet_vs_solo": {
            "latency_p50": ratio("latency_ms", "p50"),
            "latency_p99": ratio("latency_ms", "p99"),
            "overhead_p99_ms": round(
                quiet_mixed["overhead_ms"]["p99"] - quiet_solo["overhead_ms"]["p99"], 1
            ),
        },
    }


def print_tenants_table(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"chordline bench, {len(result[MIXED])} tenants, skew {result['skew']:g}, "
        f"{result['rate']:g} turns/s (ms; p50 / p99)"
    )
    for column in ("run", "tenant", "turns/s", "latency", "overhead", "turns", "refused", "errors"):
        table.add_column(column, justify="left" if column in ("run", "tenant") else "right")
    rates = result["tenant_rates"]
    for run in (MIXED, SOLO):
        for i, (name, row) in enumerate(result[MIXED].items()):
            if run == SOLO and i == 0:
                continue
            row = result[run][name]
            table.add_row(
                run,
                name,
                f"{rates[i]:.2f}",
                f"{row['latency_ms']['p50']:,.1f} / {row['latency_ms']['p99']:,.1f}",
                f"{row['overhead_ms']['p50']:,.1f} / {row['overhead_ms']['p99']:,.1f}",
                str(row["turns"]),
                str(row["refused"]),
                str(row["errors"]),
            )
    console.print(table)
    vs = result["quiet_vs_solo"]
    console.print(
        f"quiet tenants beside the noisy one, against their solo run: latency p50 "
        f"x{vs['latency_p50']:.3f}, p99 x{vs['latency_p99']:.3f}; overhead p99 "
        f"{vs['overhead_p99_ms']:+.1f} ms"
    )
