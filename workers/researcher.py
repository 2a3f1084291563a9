"""Queue ``researcher``: what the tenant's knowledge base says about a turn."""

from __future__ import annotations

from typing import Any

from shared.contract import RESEARCHER_TASK
from shared.turn import flow
from workers.app import app
from workers.base import ChordlineTask, run_turn_stage


# ignore_result: Celery still hands the return value to the chord (kept in the chord's own
# list in Redis, which the merge receives); only the per-task result key that nothing
# reads (a SET and a PUBLISH per task) is skipped.
@app.task(name=RESEARCHER_TASK, bind=True, base=ChordlineTask, ignore_result=True)
def researcher(self: ChordlineTask, /, **payload: Any) -> Any:
    return run_turn_stage(self, payload, lambda ref, origin: flow.research(ref.turn_id, origin))
