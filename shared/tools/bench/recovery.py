"""`chordline bench-recovery`: after a worker is SIGKILLed, how long until its turns end.

Workers run from the Procfile with the default recovery settings, under a steady Poisson
load of turns with the default simulated stage latencies. Each round SIGKILLs one
turn worker (its whole process group, as the OOM killer or a lost node would) and starts
it again at once, as a process manager does. The turns of that round are the ones in flight
on the killed worker's queue at the moment of the kill, read from Postgres: for the
orchestrator and researcher, turns without that stage's output; for the merge, turns with
both header outputs but no route; for the agents, routed turns. Recovery time is from the
kill to the commit of each such turn's end (completed, or failed with a reason).

The target: every affected turn ends within visibility timeout + sweeper interval. A
killed worker's unacknowledged messages come back once the visibility timeout has passed
(checked every ``unacked_restore_interval_s``); turns whose messages are gone altogether
are re-driven by the sweeper after their stage deadline.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import and_, select

from shared.client import enqueue_turn
from shared.config import get_settings
from shared.counts import counted
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant
from shared.dispatch import dispatch_app, flush_dispatch
from shared.errors import InvalidInput
from shared.kb.ingest import ingest_paths
from shared.providers.registry import get_providers
from shared.tools.bench.turns import MAX_RATE, QUESTIONS, SIMULATED_ENV, check_positive
from shared.tools.demo.conversation import DEMO_KB
from shared.tools.stack.procfile import (
    TURN_PROCESSES,
    start_workers,
    wait_for_workers,
)
from shared.tools.stats import percentile

TENANT = "bench-recovery"
PROCESSES = (*TURN_PROCESSES, "maintenance", "beat")
OPEN = ("queued", "routed")
MAX_ROUNDS = 100
MAX_WARMUP_S = 600.0


def check_recovery_load(*, rate: float, rounds: int, warmup_s: float) -> None:
    """The options of a run, before anything starts: a run that kills no worker, or whose
    load never arrives (rate 0) or floods (a negative rate), would measure nothing."""
    check_positive("--rate", rate, limit=MAX_RATE)
    if not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidInput(
            "--rounds", f"is {rounds}; it must be at least 1 and at most {MAX_ROUNDS}"
        )
    if not 0 <= warmup_s <= MAX_WARMUP_S:  # NaN fails too
        raise InvalidInput(
            "--warmup", f"is {warmup_s:g}; it must be at least 0 and at most {MAX_WARMUP_S:g}"
        )


@dataclass
class Round:
    victim: str
    killed_at: float
    affected: list[str]
    ended_s: list[float] = field(default_factory=list)
    failed: int = 0
    fallback: int = 0
    unended: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "victim": self.victim,
            "affected": len(self.affected),
            "ended": len(self.ended_s),
            "failed_with_reason": self.failed,
            "fallback_replies": self.fallback,
            "unended": self.unended,
            "p50_s": percentile(self.ended_s, 50),
            "p95_s": percentile(self.ended_s, 95),
            "max_s": percentile(self.ended_s, 100),
        }


def _in_flight_on(victim: str) -> Any:
    """Which open turns are waiting on this worker's queue, by their durable outputs."""
    if victim == "agents":
        return Turn.status == "routed"
    header = and_(Turn.status == "queued", Turn.routed_at.is_(None))
    if victim == "orchestrator":
        return and_(header, Turn.orchestrated_at.is_(None))
    if victim == "researcher":
        return and_(header, Turn.researched_at.is_(None))
    return and_(header, Turn.orchestrated_at.is_not(None), Turn.researched_at.is_not(None))


def _affected(victim: str, *, since: float) -> list[str]:
    """Turns of this run (not left over by an earlier one) in flight on the victim's queue."""
    with session_scope() as session:
        rows = session.scalars(
            select(Turn.id).where(
                Turn.tenant_id == TENANT, Turn.accepted_at >= since, _in_flight_on(victim)
            )
        ).all()
    return [str(r) for r in rows]


class _Load(threading.Thread):
    def __init__(self, rate: float, seed: int) -> None:
        super().__init__(name="bench-recovery-load", daemon=True)
        self.rate, self.rng, self.halt = rate, random.Random(seed), threading.Event()
        self.sent = 0

    def run(self) -> None:
        while not self.halt.wait(self.rng.expovariate(self.rate)):
            enqueue_turn(TENANT, f"c-{uuid.uuid4().hex[:12]}", self.rng.choice(QUESTIONS))
            self.sent += 1


def _prepare_tenant() -> None:
    with session_scope() as session:
        ensure_tenant(session, tenant_id=TENANT)
    ingest_paths([DEMO_KB], tenant_id=TENANT, embedder=get_providers().embedder)


def _await_ends(item: Round, *, timeout_s: float) -> None:
    ids = [uuid.UUID(t) for t in item.affected]
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(Turn.status, Turn.completed_at, Turn.agent_fallback).where(Turn.id.in_(ids))
            ).all()
        open_now = [r for r in rows if r.status in OPEN]
        if not open_now or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    item.unended = len(open_now)
    ended = [r for r in rows if r.status not in OPEN]
    item.ended_s = [max(0.0, (r.completed_at or 0) - item.killed_at) for r in ended]
    item.failed = sum(1 for r in ended if r.status == "failed")
    item.fallback = sum(1 for r in ended if r.status == "completed" and r.agent_fallback)


def run_recovery_bench(
    *,
    rate: float,
    rounds: int,
    warmup_s: float,
    seed: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Kill one turn worker per round under load; report how long its turns took to end."""
    check_recovery_load(rate=rate, rounds=rounds, warmup_s=warmup_s)
    settings = get_settings()
    bound_s = settings.celery.visibility_timeout_s + settings.celery.sweeper_interval_s
    _prepare_tenant()
    env = {**os.environ, **SIMULATED_ENV}
    log_dir = settings.data_dir / "logs" / "bench-recovery"
    group = start_workers(list(PROCESSES), env=env, log_dir=log_dir)
    results: list[Round] = []
    load = _Load(rate, seed)
    try:
        wait_for_workers(
            [*TURN_PROCESSES, "maintenance"],
            app_ping=lambda: dispatch_app().control.ping(timeout=0.5),
            timeout_s=120,
        )
        started = time.time()
        load.start()
        victims = [TURN_PROCESSES[i % len(TURN_PROCESSES)] for i in range(rounds)]
        for victim in victims:
            time.sleep(warmup_s)
            affected = _affected(victim, since=started)
            item = Round(victim, time.time(), affected)
            group.restart(victim)  # SIGKILL, then started as before
            progress(f"killed {victim}: {counted(len(affected), 'turn')} in flight on its queue")
            _await_ends(item, timeout_s=bound_s * 4)
            results.append(item)
    finally:
        load.halt.set()
        load.join(timeout=10)
        flush_dispatch(10.0)
        group.stop_all()
    rows = [r.as_dict() for r in results]
    worst = max((r["max_s"] for r in rows if r["max_s"] is not None), default=0.0)
    return {
        "rate": rate,
        "turns_sent": load.sent,
        "visibility_timeout_s": settings.celery.visibility_timeout_s,
        "unacked_restore_interval_s": settings.celery.unacked_restore_interval_s,
        "sweeper_interval_s": settings.celery.sweeper_interval_s,
        "stage_deadline_s": settings.turn.stage_deadline_s,
        "target_s": bound_s,
        "rounds": rows,
        "worst_s": worst,
        "within_target": bool(rows) and all(r["unended"] == 0 for r in rows) and worst <= bound_s,
    }


def print_recovery_table(result: dict[str, Any], console: Console) -> None:
    table = Table("killed", "affected", "ended", "failed", "fallback", "p50 s", "p95 s", "max s")
    for row in result["rounds"]:
        table.add_row(
            row["victim"],
            str(row["affected"]),
            str(row["ended"]),
            str(row["failed_with_reason"]),
            str(row["fallback_replies"]),
            *(
                "-" if row[key] is None else f"{row[key]:.1f}"
                for key in ("p50_s", "p95_s", "max_s")
            ),
        )
    console.print(table)
    verdict = "within" if result["within_target"] else "NOT within"
    console.print(
        f"worst {result['worst_s']:.1f} s: {verdict} the target of {result['target_s']:.0f} s "
        f"(visibility timeout {result['visibility_timeout_s']} s + sweeper interval "
        f"{result['sweeper_interval_s']:g} s)"
    )
