"""Redis killed with SIGKILL under load and back a second later: no worker exits over it.

The rig's supervisor would hide a worker that died (it starts it again), so this compares
each worker's PID before and after, and reads their logs for Celery's "Unrecoverable error"
(which ends a worker) as well.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.cluster import TURN_WORKERS
from tests.faults.rig import SETTINGS, Rig
from tests.faults.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = (*TURN_WORKERS, "maintenance")
# Without the guard 1 to 3 of the 5 workers exited per restart; three restarts under a
# load of 12 turns/s (many unacknowledged messages in every worker) make it certain.
ROUNDS = 3
VISIBILITY_TIMEOUT_S = float(SETTINGS["CHORDLINE_CELERY_VISIBILITY_TIMEOUT_S"])


def _log_size(rig: Rig, name: str) -> int:
    path = rig.cluster.log_dir / f"{name}.log"
    return path.stat().st_size if path.exists() else 0


def _unrecoverable_errors(rig: Rig, name: str, since: int) -> list[str]:
    """The messages of Celery's "Unrecoverable error" lines (JSON logs) after ``since``."""
    with (rig.cluster.log_dir / f"{name}.log").open("rb") as handle:
        handle.seek(since)
        lines = handle.read().decode(errors="replace").splitlines()
    found = []
    for line in lines:
        if "Unrecoverable error" in line:
            try:
                found.append(str(json.loads(line).get("message", line)))
            except ValueError:
                found.append(line[:300])
    return found


def test_5c_workers_outlive_kill_9_and_restart_of_redis(rig: Rig) -> None:
    rig.cluster.restart_dead()
    rig.cluster.wait_ready(WORKERS)
    pids = {name: rig.cluster.pid(name) for name in WORKERS}
    offsets = {name: _log_size(rig, name) for name in WORKERS}
    # No worker killed on purpose (no killer): any exit is the Redis restart's doing.
    with rig.chaos(rate=12.0, kill_every_s=None) as load:
        for _ in range(ROUNDS):
            time.sleep(3)
            rig.redis.kill()
            time.sleep(1)
            rig.redis.start(appendonly=True)  # same port, same data dir
        time.sleep(4)
        exited = [n for n in WORKERS if rig.cluster.pid(n) != pids[n] or not rig.cluster.alive(n)]
    errors = {n: e for n in WORKERS if (e := _unrecoverable_errors(rig, n, offsets[n]))}
    assert not exited, f"workers exited after Redis came back: {exited}; {errors}"
    assert not errors, errors
    outcome = rig.verify("5c. kill -9 Redis, back after 1 s: no worker exits", load)
    assert outcome.completed > 0
    # acks_late holds: what the workers had delivered and not acknowledged when their
    # connections broke is back on its queues (and run) once the visibility timeout passed.
    admin = rig.redis.client()
    wait_until(
        lambda: admin.hlen("unacked") == 0,
        timeout_s=VISIBILITY_TIMEOUT_S * 4,
        what="every unacknowledged message restored and acknowledged",
    )
