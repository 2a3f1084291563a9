"""Queue ``ingest``: one knowledge-base document per task.

The payload is the id of a job row in Postgres, which holds the document's text; the outcome
is written back on that row for the caller of ``kb ingest`` to collect.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.config import get_settings
from shared.contract import INGEST_TASK, IngestPayload, IngestResult, to_wire
from shared.kb.jobs import JobStatus, fail_ingest_job, run_ingest_job
from shared.providers.registry import get_providers
from workers.app import app
from workers.base import ChordlineTask

log = logging.getLogger(__name__)


class IngestTask(ChordlineTask):
    """An ingest task that fails for good (retries spent, a bug) ends its job as failed,
    so the caller waiting on the job hears about it instead of waiting out its timeout."""

    abstract = True

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = (kwargs or {}).get("job_id")
        if not isinstance(job_id, str):
            return
        try:
            fail_ingest_job(job_id, error=f"the ingest worker failed: {exc}"[:500])
        except Exception as unmarked:  # the database may be what failed
            log.warning(
                "ingest job left queued",
                extra={"action": "kb_ingest_unmarked", "reason": str(unmarked)},
            )


@app.task(name=INGEST_TASK, bind=True, base=IngestTask, ignore_result=True)
def ingest_document(self: IngestTask, /, **payload: Any) -> dict[str, Any]:
    ref: IngestPayload = self.payload(payload)
    return to_wire(IngestResult(outcome=_ingest(ref.job_id)))


def _ingest(job_id: str) -> str:
    try:
        return run_ingest_job(job_id, embedder=get_providers().embedder)
    except SoftTimeLimitExceeded:
        limit = get_settings().celery.soft_time_limit_s
        fail_ingest_job(
            job_id,
            error=f"storing it took longer than the task time limit ({limit} s, "
            "CHORDLINE_CELERY_SOFT_TIME_LIMIT_S); split the document or ingest it with "
            "`kb ingest --mode inline`",
        )
        return JobStatus.FAILED.value
