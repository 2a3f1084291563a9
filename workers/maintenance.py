"""Queue ``maintenance``: the outbox relay (which also lets held turns go when their tenant
has room) and the stuck-turn sweeper (run by beat). Each
sweep also records beat's heartbeat (shared/heartbeat.py), which `chordline doctor` reads.

They send no task events, even while Flower (or ``celery control enable_events``) has the
worker's events on: beat runs them every few seconds, and their events would bury the turns'
tasks in Flower's task list. Their own logs and metrics still record every run.
"""

from __future__ import annotations

from typing import Any

from shared.contract import RELAY_TASK, SWEEP_TASK, RelayResult, SweepResult, to_wire
from shared.heartbeat import record_sweeper_heartbeat
from shared.redis_conn import get_redis
from shared.turn.recovery import relay_outbox, release_held_turns, sweep_stuck_turns
from workers.app import app
from workers.base import ChordlineTask

MAINTENANCE_OPTIONS: dict[str, Any] = {
    "bind": True,
    "base": ChordlineTask,
    "ignore_result": True,
    "max_retries": 0,
    "send_events": False,
}


@app.task(name=RELAY_TASK, **MAINTENANCE_OPTIONS)
def relay(self: ChordlineTask, /, **payload: Any) -> dict[str, Any]:
    self.payload(payload)
    held = release_held_turns()
    sent = relay_outbox()
    return to_wire(
        RelayResult(sent=sent, held_released=held.released, held_expired=len(held.expired))
    )


@app.task(name=SWEEP_TASK, **MAINTENANCE_OPTIONS)
def sweep(self: ChordlineTask, /, **payload: Any) -> dict[str, Any]:
    self.payload(payload)
    record_sweeper_heartbeat(get_redis())
    report = sweep_stuck_turns()
    return to_wire(SweepResult(redriven=len(report.redriven), failed=len(report.failed)))
