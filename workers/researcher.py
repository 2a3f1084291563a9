"""Queue ``researcher``: what the tenant's knowledge base says about a turn."""

from __future__ import annotations

from typing import Any

from shared.contract import RESEARCHER_TASK
from shared.schemas import TurnRef
from shared.turn import flow
from workers.app import app
from workers.base import ChordlineTask, run_turn_stage


@app.task(name=RESEARCHER_TASK, bind=True, base=ChordlineTask)
def researcher(self: ChordlineTask, /, **payload: Any) -> Any:
    return run_turn_stage(
        self, payload, TurnRef, lambda ref, origin: flow.research(ref.turn_id, origin)
    )
