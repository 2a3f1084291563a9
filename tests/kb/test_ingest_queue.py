"""`kb ingest` on the ingest queue: one Celery task per document on a real worker, the
progress fed by finished tasks, bad files reported at the door and never queued."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shared.db.models import KbIngestJob
from shared.db.session import session_scope
from shared.kb import ingest, jobs
from shared.kb.documents import LoadedDocument, discover
from shared.kb.ingest import IngestReport, Outcome, list_documents
from shared.kb.jobs import (
    fail_ingest_job,
    ingest_queued,
    ingest_workers_answer,
    run_ingest_job,
    stage_jobs,
    wait_for_batch,
)
from shared.providers.local import LocalEmbedder
from tests.kb.conftest import chordline, write_docs

pytestmark = pytest.mark.integration

DOCS = {
    f"topic-{i}.md": f"# Topic {i}\n\nTopic {i} covers item {i} in detail. It has rules."
    for i in range(6)
}


def test_each_document_is_one_task_and_progress_follows_their_completion(
    ingest_worker: Path, empty_tenant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ingest_workers_answer(timeout_s=5.0)
    docs = write_docs(tmp_path / "docs", {**DOCS, "broken.md": b"\x00\xff\x00"})
    found = discover([docs])
    published: list[str] = []

    def publish(job_ids: Sequence[uuid.UUID]) -> None:
        published.extend(map(str, job_ids))
        real_publish(job_ids)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the caller stored a document itself")

    real_publish = jobs.publish_jobs
    monkeypatch.setattr(jobs, "publish_jobs", publish)
    monkeypatch.setattr(jobs, "ingest_document", never)
    monkeypatch.setattr(ingest, "ingest_documents", never)
    progress: list[tuple[str, Outcome]] = []
    report = ingest_queued(
        found.sources,
        tenant_id=empty_tenant,
        embedding_model="local-hash-384",
        report=IngestReport(),
        on_progress=lambda source, outcome: progress.append((Path(source).name, outcome)),
    )
    assert (report.added, report.pending) == (6, 0)
    assert [(Path(r.source).name, r.reason.value) for r in report.rejected] == [
        ("broken.md", "binary")
    ]
    assert sorted(progress) == sorted(
        [(name, Outcome.ADDED) for name in DOCS] + [("broken.md", Outcome.REJECTED)]
    )
    # one task per good document, stored by the worker; the bad one was never queued
    assert len(set(published)) == 6
    with session_scope() as session:
        assert len(list_documents(session, empty_tenant)) == 6
        # the job rows (and the document texts they carried) are gone once collected
        assert session.scalar(select(func.count()).select_from(KbIngestJob)) == 0


def test_the_command_uses_the_queue_and_prints_a_summary(
    ingest_worker: Path, empty_tenant: str, tmp_path: Path
) -> None:
    docs = write_docs(tmp_path / "docs", {**DOCS, "notes.txt": "   "})
    result = chordline("kb", "ingest", str(docs), "--tenant", empty_tenant)
    assert result.returncode == 1, result.stderr  # one document was rejected
    assert "6 documents (6 added, 0 replaced, 0 unchanged)" in result.stdout
    assert "(queued on the ingest workers)" in result.stdout
    assert "notes.txt [empty]: is empty" in result.stderr

    again = chordline("kb", "ingest", str(docs / "topic-1.md"), "--tenant", empty_tenant)
    assert again.returncode == 0, again.stderr
    assert "1 document (0 added, 0 replaced, 1 unchanged), 0 chunks written" in again.stdout


def _one_staged_job(tenant: str, source: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A batch of one staged ingest job, as `kb ingest` leaves it before a worker runs it."""
    batch = uuid.uuid4()
    with session_scope() as session:
        [job_id] = stage_jobs(
            session,
            batch_id=batch,
            tenant_id=tenant,
            documents=[LoadedDocument(source, "markdown", "# Title\n\nText.")],
            embedding_model="local-hash-384",
        )
    return batch, job_id


def test_a_job_the_worker_gives_up_on_is_reported_as_failed(empty_tenant: str) -> None:
    batch, job_id = _one_staged_job(empty_tenant, "big.md")
    assert fail_ingest_job(str(job_id), error="took longer than the task time limit")
    assert not fail_ingest_job(str(job_id), error="again")  # a job ends once
    assert run_ingest_job(str(job_id), embedder=LocalEmbedder()) == "already finished"
    report = IngestReport()
    wait_for_batch(batch, expected=1, report=report, idle_timeout_s=5)
    assert [(f.source, f.reason) for f in report.failed] == [
        ("big.md", "took longer than the task time limit")
    ]
    assert report.rejected == []


def test_a_task_that_fails_for_good_ends_its_job(empty_tenant: str) -> None:
    from workers.ingest import ingest_document

    batch, job_id = _one_staged_job(empty_tenant, "a.md")
    ingest_document.on_failure(RuntimeError("boom"), "task-1", (), {"job_id": str(job_id)}, None)
    report = IngestReport()
    wait_for_batch(batch, expected=1, report=report, idle_timeout_s=5)
    assert [(f.source, f.reason) for f in report.failed] == [
        ("a.md", "the ingest worker failed: boom")
    ]
