"""Queue ``orchestrator``: phase, intent and proposed agent for a turn."""

from __future__ import annotations

from typing import Any

from shared.contract import ORCHESTRATOR_TASK
from shared.turn import flow
from workers.app import app
from workers.base import ChordlineTask, run_turn_stage


# ignore_result: Celery still hands the return value to the chord (kept in the chord's own
# list in Redis, which the merge receives); only the per-task result key that nothing
# reads (a SET and a PUBLISH per task) is skipped.
@app.task(name=ORCHESTRATOR_TASK, bind=True, base=ChordlineTask, ignore_result=True)
def orchestrator(self: ChordlineTask, /, **payload: Any) -> Any:
    return run_turn_stage(self, payload, lambda ref, origin: flow.orchestrate(ref.turn_id, origin))
