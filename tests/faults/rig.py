"""Everything a fault scenario runs on: its own servers behind TCP proxies, the workers, the
supervisor, the killer, the load, and the invariant check with a per-scenario report."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.cluster import Cluster, Killer
from tests.faults.invariant import Outcome, recovery_problems, verify
from tests.faults.load import Load
from tests.faults.proxy import TcpProxy
from tests.faults.servers import Postgres, Valkey

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
REPORT_FILE = ARTIFACTS / "faults-report.json"

# Short deadlines so that the suite converges in seconds; the defaults are in shared/config.py.
STAGE_DEADLINE_S = 6
SETTINGS = {
    "CHORDLINE_PROVIDERS": "simulated",
    "CHORDLINE_SIMULATED_LATENCY_SCALE": "0.2",
    "CHORDLINE_TURN_STAGE_DEADLINE_S": str(STAGE_DEADLINE_S),
    "CHORDLINE_TURN_MAX_ATTEMPTS": "3",
    "CHORDLINE_CELERY_SWEEPER_INTERVAL_S": "1",
    "CHORDLINE_CELERY_RELAY_INTERVAL_S": "1",
    "CHORDLINE_CELERY_SOFT_TIME_LIMIT_S": "4",
    "CHORDLINE_CELERY_HARD_TIME_LIMIT_S": "5",
    "CHORDLINE_CELERY_VISIBILITY_TIMEOUT_S": "8",
    "CHORDLINE_CELERY_UNACKED_RESTORE_INTERVAL_S": "1",
    "CHORDLINE_CELERY_MAX_DELIVERIES": "3",
    "CHORDLINE_LOG_FORMAT": "json",
}
# Every accepted turn must have ended this long after the faults stopped: three sweeps of a
# stage deadline each (max_attempts), plus a visibility timeout, plus room for a slow machine.
SETTLE_S = 90.0
# The recovery target at these settings. One recovery is bounded by the later of a stage
# deadline plus a sweep (6 + 1 s) and a visibility timeout plus a restore check (8 + 1 s);
# the killer strikes every 4 s, so a re-driven stage can be struck once more: two
# recoveries and the turn's own two seconds.
ONE_RECOVERY_S = max(
    STAGE_DEADLINE_S + float(SETTINGS["CHORDLINE_CELERY_SWEEPER_INTERVAL_S"]),
    float(SETTINGS["CHORDLINE_CELERY_VISIBILITY_TIMEOUT_S"])
    + float(SETTINGS["CHORDLINE_CELERY_UNACKED_RESTORE_INTERVAL_S"]),
)
RECOVERY_TARGET_S = 2 * ONE_RECOVERY_S + 2.0

REPORT: list[Outcome] = []


def write_report() -> list[dict[str, object]]:
    rows = [outcome.as_row() for outcome in REPORT]
    ARTIFACTS.mkdir(exist_ok=True)
    REPORT_FILE.write_text(json.dumps(rows, indent=1))
    return rows


@dataclass
class Rig:
    data_dir: Path
    postgres: Postgres
    redis: Valkey
    pg_proxy: TcpProxy
    redis_proxy: TcpProxy
    cluster: Cluster
    marker: str
    tenants: list[str] = field(default_factory=list)
    seed: int = 0

    def fault(self, kind: str, stage: str, seconds: float | None = None) -> str:
        """The text that makes a worker misbehave on purpose (workers/fault_hooks.py)."""
        return f"{self.marker}:{kind}:{stage}" + (f":{seconds:g}" if seconds else "")

    def fired(self, kind: str, turn_id: str | None, stage: str) -> int:
        """How often a worker's hook acted on this fault of this turn (its Redis counter): a
        scenario checks it, so a hook that stops firing fails the scenario instead of
        leaving it passing without its fault."""
        from shared.redis_conn import get_redis
        from workers.fault_hooks import count_key

        return int(get_redis().get(count_key(kind, turn_id or "", stage)) or 0)

    @contextlib.contextmanager
    def chaos(
        self, *, rate: float = 3.0, kill_every_s: float | None = 4.0, spare: tuple[str, ...] = ()
    ) -> Iterator[Load]:
        """Background load, and workers killed on a timer, for the duration of the block.

        ``spare``: processes the killer leaves alone, where a scenario counts executions.
        """
        self.seed += 1
        self.cluster.spared = set(spare)
        load = Load(self.tenants, rate=rate, seed=self.seed)
        killer = (
            Killer(self.cluster, interval_s=kill_every_s, seed=self.seed) if kill_every_s else None
        )
        load.start()
        if killer:
            killer.start()
        started = time.monotonic()
        try:
            yield load
            if killer and kill_every_s:  # long enough for the killer to have struck at least once
                time.sleep(max(0.0, kill_every_s / 2 + 1.0 - (time.monotonic() - started)))
        finally:
            if killer:
                killer.halt.set()
                killer.join(timeout=60)
            load.stop()
            self.cluster.spared = set()
            self.cluster.restart_dead()
            if killer:
                load.kills = len(killer.kills)  # type: ignore[attr-defined]

    def verify(
        self,
        scenario: str,
        load: Load,
        *,
        extra: list[str] | None = None,
        meant_to_fail: int = 0,
        target_s: float = RECOVERY_TARGET_S,
    ) -> Outcome:
        """The invariant, then the scenario's promise: all but ``meant_to_fail`` turns
        complete, and every turn ends within ``target_s`` of its acceptance."""
        outcome = verify(scenario, [*load.accepted, *(extra or [])], deadline_s=SETTLE_S)
        outcome.notes["refused_at_door"] = sum(load.refused.values())
        outcome.notes["workers_killed"] = getattr(load, "kills", 0)
        REPORT.append(outcome)
        assert outcome.accepted > 0, "the scenario accepted no turn"
        if hasattr(load, "kills"):
            assert load.kills > 0, "no worker was killed during the scenario"
        assert outcome.lost == 0 and not outcome.violations, outcome.violations[:10]
        problems = recovery_problems(outcome, meant_to_fail=meant_to_fail, target_s=target_s)
        assert not problems, f"{scenario}: {'; '.join(problems)}"
        return outcome


def new_marker() -> str:
    return "fault-" + secrets.token_hex(12)


def worker_env(*, data_dir: Path, pg_url: str, redis_url: str, marker: str) -> dict[str, str]:
    return {
        **SETTINGS,
        "CHORDLINE_DATA_DIR": str(data_dir),
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "CHORDLINE_FAULT_MARKER": marker,
    }


def fresh_data_dir() -> Path:
    path = ROOT / ".chordline" / f"faults-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
