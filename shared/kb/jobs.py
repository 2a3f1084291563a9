"""Ingestion on the ``ingest`` queue: one Celery task per document.

The caller reads and checks each file at the door (a bad file is reported and never
queued), writes the good ones to ``kb_ingest_jobs`` in Postgres, and publishes one task per
job after the commit: the task carries the job's id, never the text, and a worker on
another machine needs no access to the caller's files. A worker stores the document and
writes its outcome on the job row; the caller collects finished rows (deleting them as it
reads, so each is counted once) and feeds its progress bar from them.

A job runs once even if its task is delivered twice: the worker finishes a job only while
it is still queued, and storing a document is idempotent by content hash anyway.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

from sqlalchemy import CursorResult, delete, func, text, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.contract import ingest_signature
from shared.db.models import KbIngestJob
from shared.db.session import session_scope
from shared.errors import InvalidInput, PermanentError
from shared.kb.documents import (
    DocumentSource,
    LoadedDocument,
    Rejected,
    RejectedDocument,
    Rejection,
    read_document,
)
from shared.kb.ingest import (
    FailedDocument,
    IngestReport,
    Outcome,
    ProgressCallback,
    StoreResult,
    ingest_document,
)
from shared.providers.base import Embedder

log = logging.getLogger(__name__)

STAGE_BATCH = 50
POLL_INTERVAL_S = 0.2
STALE_JOBS = "1 day"
PING_TIMEOUT_S = 1.0  # a loaded worker may take a while to answer


class JobStatus(StrEnum):
    QUEUED = "queued"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True)
class FinishedJob:
    source: str
    status: str
    outcome: str | None
    chunks: int
    error: str | None


def ingest_workers_answer(timeout_s: float = PING_TIMEOUT_S) -> bool:
    """True when at least one worker of the ``ingest`` process type answers a ping.

    Only workers named ``ingest@...`` (as the Procfile names them) are asked, and the first
    answer ends the wait; with none running, the wait is the whole timeout.
    """
    from shared.dispatch import dispatch_app

    try:
        replies = dispatch_app().control.ping(
            timeout=timeout_s, pattern="ingest@*", matcher="glob", limit=1
        )
    except Exception:  # no broker: no workers either
        return False
    return any(name.split("@", 1)[0] == "ingest" for reply in replies or [] for name in reply)


def _batches(items: Iterable[DocumentSource], size: int) -> Iterator[list[DocumentSource]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def stage_jobs(
    session: Session,
    *,
    batch_id: uuid.UUID,
    tenant_id: str,
    documents: Sequence[LoadedDocument],
    embedding_model: str,
) -> list[uuid.UUID]:
    jobs = [
        KbIngestJob(
            id=uuid.uuid4(),
            batch_id=batch_id,
            tenant_id=tenant_id,
            source=doc.source,
            kind=doc.kind,
            body=doc.text,
            embedding_model=embedding_model,
        )
        for doc in documents
    ]
    session.add_all(jobs)
    return [job.id for job in jobs]


def forget_stale_jobs(session: Session) -> None:
    """Finished jobs whose caller stopped waiting for them, a day later."""
    session.execute(
        text(
            "DELETE FROM kb_ingest_jobs WHERE status <> 'queued' "
            f"AND finished_at < now() - interval '{STALE_JOBS}'"
        )
    )


def publish_jobs(job_ids: Sequence[uuid.UUID]) -> None:
    from shared.dispatch import dispatch_app

    app = dispatch_app()
    for job_id in job_ids:
        ingest_signature(app, job_id=str(job_id)).apply_async()


def collect_finished(session: Session, batch_id: uuid.UUID) -> list[FinishedJob]:
    """The batch's jobs that finished since the last call; each is returned once."""
    rows = session.execute(
        delete(KbIngestJob)
        .where(KbIngestJob.batch_id == batch_id, KbIngestJob.status != JobStatus.QUEUED)
        .returning(
            KbIngestJob.source,
            KbIngestJob.status,
            KbIngestJob.outcome,
            KbIngestJob.chunks,
            KbIngestJob.error,
        )
    ).all()
    return [FinishedJob(r.source, r.status, r.outcome, r.chunks, r.error) for r in rows]


def _record(report: IngestReport, job: FinishedJob) -> Outcome:
    if job.status == JobStatus.DONE and job.outcome:
        result = StoreResult(Outcome(job.outcome), job.chunks)
        report.count(result)
        return result.outcome
    if job.status == JobStatus.REJECTED and job.outcome:
        report.rejected.append(Rejected(job.source, Rejection(job.outcome), job.error or ""))
        return Outcome.REJECTED
    report.failed.append(FailedDocument(job.source, job.error or job.status))
    return Outcome.FAILED


def _read_or_reject(
    source: DocumentSource, *, report: IngestReport, on_progress: ProgressCallback | None
) -> LoadedDocument | None:
    try:
        return read_document(source, max_bytes=get_settings().kb.max_file_bytes)
    except RejectedDocument as exc:
        report.rejected.append(Rejected(source.source, exc.reason, exc.detail))
        if on_progress:
            on_progress(source.source, Outcome.REJECTED)
        return None


def enqueue_sources(
    sources: Iterable[DocumentSource],
    *,
    batch_id: uuid.UUID,
    tenant_id: str,
    embedding_model: str,
    report: IngestReport,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Check each file, queue the good ones; the number of jobs queued."""
    queued = 0
    with session_scope() as session:
        forget_stale_jobs(session)
    for batch in _batches(sources, STAGE_BATCH):
        loaded = [
            doc
            for source in batch
            if (doc := _read_or_reject(source, report=report, on_progress=on_progress))
        ]
        if not loaded:
            continue
        with session_scope() as session:
            job_ids = stage_jobs(
                session,
                batch_id=batch_id,
                tenant_id=tenant_id,
                documents=loaded,
                embedding_model=embedding_model,
            )
        publish_jobs(job_ids)  # after the commit: a worker always finds its job
        queued += len(job_ids)
    return queued


def wait_for_batch(
    batch_id: uuid.UUID,
    *,
    expected: int,
    report: IngestReport,
    on_progress: ProgressCallback | None = None,
    idle_timeout_s: float,
) -> None:
    """Count finished jobs as they come back, until all did or none did for a while."""
    done = 0
    last_progress = time.monotonic()
    while done < expected:
        with session_scope() as session:
            finished = collect_finished(session, batch_id)
        for job in finished:
            outcome = _record(report, job)
            if on_progress:
                on_progress(job.source, outcome)
        done += len(finished)
        if finished:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > idle_timeout_s:
            report.pending = expected - done
            return
        if done < expected:
            time.sleep(POLL_INTERVAL_S)


def ingest_queued(
    sources: Sequence[DocumentSource],
    *,
    tenant_id: str,
    embedding_model: str,
    report: IngestReport,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """Fan the documents out to the ingest workers, one task each, and wait for them."""
    batch_id = uuid.uuid4()
    report.mode = "queued on the ingest workers"
    expected = enqueue_sources(
        sources,
        batch_id=batch_id,
        tenant_id=tenant_id,
        embedding_model=embedding_model,
        report=report,
        on_progress=on_progress,
    )
    wait_for_batch(
        batch_id,
        expected=expected,
        report=report,
        on_progress=on_progress,
        idle_timeout_s=get_settings().kb.queue_idle_timeout_s,
    )
    return report


# --------------------------------------------------------------------------- worker side


def _finish(
    job_id: uuid.UUID, *, status: str, outcome: str | None, chunks: int, error: str | None
) -> bool:
    with session_scope() as session:
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(KbIngestJob)
            .where(KbIngestJob.id == job_id, KbIngestJob.status == JobStatus.QUEUED)
            .values(
                status=status,
                outcome=outcome,
                chunks=chunks,
                error=error,
                body=None,
                finished_at=func.now(),
            )
        )
    return bool(result.rowcount)


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise InvalidInput("job_id", f"{job_id[:40]!r} is not a UUID") from exc


def fail_ingest_job(job_id: str, *, error: str) -> bool:
    """End a queued job as failed (the worker gave up on it); False if it already ended."""
    failed = _finish(
        _job_uuid(job_id), status=JobStatus.FAILED, outcome=None, chunks=0, error=error
    )
    if failed:
        log.error("ingest job failed", extra={"action": "kb_ingest_failed", "reason": error})
    return failed


def run_ingest_job(job_id: str, *, embedder: Embedder) -> str:
    """Store the document of one queued job and write its outcome on the job row."""
    job_uuid = _job_uuid(job_id)
    with session_scope() as session:
        job = session.get(KbIngestJob, job_uuid)
        if job is None or job.status != JobStatus.QUEUED or job.body is None:
            return "already finished"
        document = LoadedDocument(job.source, job.kind, job.body)
        tenant_id, wanted_model = job.tenant_id, job.embedding_model
    if wanted_model != embedder.model:
        _finish(
            job_uuid,
            status=JobStatus.FAILED,
            outcome=None,
            chunks=0,
            error=f"this ingest worker embeds with {embedder.model!r}, but the document was "
            f"queued for {wanted_model!r}; run the caller and the workers with the same providers",
        )
        return JobStatus.FAILED
    try:
        result = ingest_document(
            document, tenant_id=tenant_id, embedder=embedder, settings=get_settings().kb
        )
    except RejectedDocument as exc:
        _finish(
            job_uuid,
            status=JobStatus.REJECTED,
            outcome=exc.reason.value,
            chunks=0,
            error=exc.detail,
        )
        return JobStatus.REJECTED
    except PermanentError as exc:
        _finish(job_uuid, status=JobStatus.FAILED, outcome=None, chunks=0, error=str(exc))
        log.error(
            "ingest job failed",
            extra={"action": "kb_ingest_failed", "tenant_id": tenant_id, "reason": str(exc)},
        )
        return JobStatus.FAILED
    _finish(
        job_uuid,
        status=JobStatus.DONE,
        outcome=result.outcome.value,
        chunks=result.chunks,
        error=None,
    )
    return result.outcome.value
