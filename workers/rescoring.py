"""Queue ``rescoring``: one batch of a re-scoring run per task, on workers of its own."""

from __future__ import annotations

import logging
from typing import Any

from shared.contract import RESCORE_BATCH_TASK
from shared.rescoring.batch import score_batch
from shared.rescoring.fanout import RescoreBatchRef
from workers.app import app
from workers.base import ChordlineTask, validate

log = logging.getLogger(__name__)


@app.task(name=RESCORE_BATCH_TASK, bind=True, base=ChordlineTask, ignore_result=True)
def score_rescoring_batch(self: ChordlineTask, /, **payload: Any) -> dict[str, Any]:
    ref: RescoreBatchRef = validate(RescoreBatchRef, payload)
    origin = self.origin()
    if self.over_delivered(origin):
        # It keeps killing its worker: leave its turns unscored (resume can try again).
        log.error(
            f"rescoring run {ref.run_id} batch {ref.batch} dropped after "
            f"{origin.delivery} deliveries",
            extra={"action": "rescore_batch_dropped", "queue": origin.queue},
        )
        return {"run_id": ref.run_id, "batch": ref.batch, "end": "dropped"}
    return score_batch(ref.run_id, ref.batch).as_dict()
