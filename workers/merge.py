"""Queue ``merge``: the chord callback that routes a turn and enqueues its agent."""

from __future__ import annotations

from typing import Any

from shared.contract import MERGE_TASK
from shared.turn import flow
from workers.app import app
from workers.base import ChordlineTask, run_turn_stage


@app.task(name=MERGE_TASK, bind=True, base=ChordlineTask, ignore_result=True)
def merge(self: ChordlineTask, /, *header_results: Any, **payload: Any) -> Any:
    # The chord passes the header tasks' results: the outputs both stages committed to
    # Postgres. The merge routes on them; without them (a re-driven merge) it reads the row.
    outputs = header_results[0] if header_results else ()
    return run_turn_stage(
        self, payload, lambda ref, origin: flow.route(ref.turn_id, origin, outputs)
    )
