"""Store documents in a tenant's knowledge base.

A document is identified by its source (its normalised absolute path); its content hash decides what
happens. The same content again changes nothing; the same content that the current
embedding model has not embedded yet gets vectors for the chunks it already has; changed
content replaces the document's chunks. Chunking and embedding run outside any transaction,
so a slow embedding model never holds a lock.

Documents are read in groups (up to ``WRITE_GROUP_CHUNKS`` chunks): one query finds what
the group's documents already have stored, each document is embedded on its own, and the
embedded ones are written together, in one transaction with one multi-row INSERT for the
documents, one for the chunks and one COPY for the vectors, so per-document round trips and
commits do not dominate a large ingest (committing each document alone made an ingest of
small documents several times slower). A write happens when the group ends, and also once
``WRITE_AFTER_S`` of embedding has passed since the last one, and before an error ends the
ingest, so a slow embedding API commits about one document at a time and what finished is
kept. A document that cannot be embedded is left out of its write and reported; it never
takes another down with it. Ingesting again skips the documents stored with the same
content hash and does only what is missing.

A document's embedding calls share one budget (``CHORDLINE_PROVIDER_INGEST_BUDGET_S``),
within which the provider's transient failures are retried. A document still failing after
that, or whose text the provider refuses, is reported as failed with the reason; a failure
no document can get past (a rejected key, an unknown model) ends the ingest at once.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from shared.config import KbSettings, get_settings
from shared.counts import counted
from shared.db.models import KbChunk, KbDocument
from shared.db.session import session_scope
from shared.db.tenants import require_tenant
from shared.errors import ChordlineError, ProviderError
from shared.kb.acronyms import refresh_aliases
from shared.kb.chunking import Chunk, chunk_document, document_title
from shared.kb.documents import (
    DocumentSource,
    LoadedDocument,
    Rejected,
    RejectedDocument,
    Rejection,
    discover,
    read_document,
    source_name,
)
from shared.kb.stores import (
    STORES,
    VectorStore,
    chunks_without_vectors,
    store_for,
    write_vectors,
)
from shared.providers.base import Embedder
from shared.providers.failures import ProviderRequestRejected

WRITE_GROUP_CHUNKS = 512
# Embedded documents are committed at least this often: an interrupted ingest loses at most
# this much embedding work (with a remote embedding API, about one document per write).
WRITE_AFTER_S = 1.0


class Outcome(StrEnum):
    ADDED = "added"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    EMBEDDED = "embedded"  # same content, newly embedded by the current model
    REJECTED = "rejected"
    FAILED = "failed"  # not stored this time: its embedding failed


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    chunks: int


@dataclass(frozen=True)
class FailedDocument:
    """A document not stored this time (its embedding failed); ingesting again retries it."""

    source: str
    reason: str
    error: ChordlineError | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.source}: {self.reason}"


DocumentResult = StoreResult | RejectedDocument | FailedDocument

# What one document's embedding may fail with without ending the ingest: the provider stayed
# unavailable through the retries, or refused this document's text.
DOCUMENT_FAILURES = (ProviderError, ProviderRequestRejected)


@dataclass
class IngestReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    embedded: int = 0
    chunks: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    failed: list[FailedDocument] = field(default_factory=list)
    skipped: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = "inline"
    pending: int = 0  # queued documents whose outcome had not come back when we stopped waiting

    @property
    def changed(self) -> bool:
        """Whether the tenant's documents changed (added or replaced)."""
        return bool(self.added or self.replaced)

    @property
    def documents(self) -> int:
        return self.added + self.replaced + self.unchanged + self.embedded

    def count(self, result: StoreResult) -> None:
        setattr(self, result.outcome.value, getattr(self, result.outcome.value) + 1)
        self.chunks += result.chunks

    def summary(self) -> str:
        parts = [
            f"{counted(self.documents, 'document')} ({self.added} added, {self.replaced} replaced, "
            f"{self.unchanged} unchanged"
            + (f", {self.embedded} embedded for a new model" if self.embedded else "")
            + ")",
            f"{counted(self.chunks, 'chunk')} written",
            f"{len(self.rejected)} rejected",
        ]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.skipped:
            parts.append(f"{counted(len(self.skipped), 'other file')} skipped")
        if self.pending:
            parts.append(f"{self.pending} still queued")
        return ", ".join(parts) + f", in {self.seconds:.2f} s ({self.mode})"


@dataclass(frozen=True)
class PreparedDocument:
    """A document chunked and embedded, ready to be written."""

    document: LoadedDocument
    digest: str
    title: str
    chunks: list[Chunk]
    vectors: list[list[float]]


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def embedding_text(heading: str, text: str) -> str:
    """What a chunk's vector is computed from: its heading path and its text."""
    return f"{heading}\n{text}"


def embedding_deadline() -> float:
    """When one document's embedding calls (and their retries) must have finished."""
    return time.time() + get_settings().providers.ingest_budget_s


def embed_texts(
    embedder: Embedder, texts: Sequence[str], *, batch: int, deadline: float | None = None
) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch):
        vectors.extend(embedder.embed(texts[start : start + batch], deadline=deadline))
    return vectors


def prepare_document(
    document: LoadedDocument, *, embedder: Embedder, settings: KbSettings
) -> PreparedDocument:
    """Chunk and embed; RejectedDocument if there is nothing to index."""
    chunks = chunk_document(document.text, kind=document.kind, size=settings.chunk_chars)
    if not chunks:
        raise RejectedDocument(Rejection.EMPTY, "has no text to index")
    vectors = embed_texts(
        embedder,
        [embedding_text(c.heading, c.text) for c in chunks],
        batch=settings.embed_batch,
        deadline=embedding_deadline(),
    )
    title = document_title(document.text, kind=document.kind, fallback=Path(document.source).stem)
    return PreparedDocument(document, content_hash(document.text), title, chunks, vectors)


# --------------------------------------------------------------------------- what is stored


def stored_versions(
    session: Session, *, tenant_id: str, sources: Sequence[str]
) -> dict[str, tuple[uuid.UUID, str]]:
    """source: (document id, content hash), for the sources the tenant already has."""
    rows = session.execute(
        select(KbDocument.source, KbDocument.id, KbDocument.content_hash).where(
            KbDocument.tenant_id == tenant_id, KbDocument.source.in_(sources)
        )
    ).all()
    return {r.source: (r.id, r.content_hash) for r in rows}


def documents_missing_vectors(
    session: Session, store: VectorStore, *, document_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Of these documents, those with a chunk that the store has no vector for."""
    if not document_ids:
        return set()
    return set(
        session.execute(
            text(f"""
            SELECT DISTINCT c.document_id FROM kb_chunks c
            WHERE c.document_id = ANY(:ids)
              AND NOT EXISTS (SELECT 1 FROM {store.table} v WHERE v.chunk_id = c.id)
            """),
            {"ids": list(document_ids)},
        ).scalars()
    )


def embed_missing(
    *, document_id: uuid.UUID, tenant_id: str, store: VectorStore, embedder: Embedder, batch: int
) -> StoreResult:
    """Same content, but the current model has not embedded all of its chunks yet."""
    with session_scope() as session:
        missing = chunks_without_vectors(session, store, document_id=document_id)
    if not missing:
        return StoreResult(Outcome.UNCHANGED, 0)
    vectors = embed_texts(
        embedder,
        [embedding_text(m.heading, m.text) for m in missing],
        batch=batch,
        deadline=embedding_deadline(),
    )
    with session_scope() as session:
        session.execute(select(KbDocument.id).where(KbDocument.id == document_id).with_for_update())
        # Another ingest may have replaced or embedded chunks meanwhile: write what is missing.
        still_missing = {
            m.id for m in chunks_without_vectors(session, store, document_id=document_id)
        }
        rows = [(m.id, v) for m, v in zip(missing, vectors, strict=True) if m.id in still_missing]
        write_vectors(session, store, tenant_id=tenant_id, rows=rows)
    return StoreResult(Outcome.EMBEDDED, len(rows))


# --------------------------------------------------------------------------- writing


def _claim_documents(
    session: Session, *, tenant_id: str, prepared: Sequence[PreparedDocument]
) -> dict[str, tuple[uuid.UUID, Outcome]]:
    """Insert new document rows, lock and update the existing ones; per source its outcome.

    An existing row that already holds the content (a concurrent ingest stored it first) is
    UNCHANGED; one with other content is REPLACED and loses its old chunks.
    """
    created = session.execute(
        pg_insert(KbDocument)
        .values(
            [
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant_id,
                    "source": p.document.source,
                    "title": p.title,
                    "content_hash": p.digest,
                    "chunk_count": len(p.chunks),
                }
                for p in prepared
            ]
        )
        .on_conflict_do_nothing(index_elements=[KbDocument.tenant_id, KbDocument.source])
        .returning(KbDocument.source, KbDocument.id)
    ).all()
    claimed = {r.source: (r.id, Outcome.ADDED) for r in created}
    others = {p.document.source: p for p in prepared if p.document.source not in claimed}
    if not others:
        return claimed
    existing = session.execute(
        select(KbDocument.source, KbDocument.id, KbDocument.content_hash)
        .where(KbDocument.tenant_id == tenant_id, KbDocument.source.in_(list(others)))
        .order_by(KbDocument.id)
        .with_for_update()
    ).all()
    replaced = [r for r in existing if r.content_hash != others[r.source].digest]
    claimed |= {r.source: (r.id, Outcome.UNCHANGED) for r in existing}
    claimed |= {r.source: (r.id, Outcome.REPLACED) for r in replaced}
    if replaced:
        session.execute(delete(KbChunk).where(KbChunk.document_id.in_([r.id for r in replaced])))
        for r in replaced:
            p = others[r.source]
            session.execute(
                update(KbDocument)
                .where(KbDocument.id == r.id)
                .values(
                    content_hash=p.digest,
                    title=p.title,
                    chunk_count=len(p.chunks),
                    updated_at=func.now(),
                )
            )
    return claimed


def write_documents(
    session: Session,
    *,
    tenant_id: str,
    prepared: Sequence[PreparedDocument],
    store: VectorStore,
) -> list[StoreResult]:
    """Documents, their chunks (one multi-row INSERT) and vectors (one COPY), in order."""
    if not prepared:
        return []
    # A lost commit is re-done by ingesting again (by content hash), so the WAL flush of a
    # bulk write need not hold the caller up; a crash never leaves a partial group behind.
    session.execute(text("SET LOCAL synchronous_commit = off"))
    claimed = _claim_documents(session, tenant_id=tenant_id, prepared=prepared)
    to_write = [p for p in prepared if claimed[p.document.source][1] is not Outcome.UNCHANGED]
    rows = [
        {
            "tenant_id": tenant_id,
            "document_id": claimed[p.document.source][0],
            "ordinal": c.ordinal,
            "heading": c.heading[:500],
            "text": c.text,
            "content_hash": content_hash(c.text),
        }
        for p in to_write
        for c in p.chunks
    ]
    if rows:
        chunk_ids = session.scalars(
            insert(KbChunk).returning(KbChunk.id, sort_by_parameter_order=True), rows
        ).all()
        vectors = [v for p in to_write for v in p.vectors]
        write_vectors(
            session, store, tenant_id=tenant_id, rows=list(zip(chunk_ids, vectors, strict=True))
        )
    results = []
    for p in prepared:
        outcome = claimed[p.document.source][1]
        results.append(StoreResult(outcome, 0 if outcome is Outcome.UNCHANGED else len(p.chunks)))
    return results


# --------------------------------------------------------------------------- ingesting


ProgressCallback = Callable[[str, Outcome], None]


@dataclass
class _Group:
    """Documents read and checked, to be ingested together."""

    documents: list[LoadedDocument] = field(default_factory=list)
    chunk_estimate: int = 0


class _PendingWrites:
    """Embedded documents waiting to be committed together, and their results once written.

    They are written when the group ends, when ``WRITE_AFTER_S`` of embedding has gone by
    since the last write, and when the ingest stops on an error: what finished is kept.
    """

    def __init__(self, *, tenant_id: str, store: VectorStore) -> None:
        self.tenant_id, self.store = tenant_id, store
        self.documents: list[PreparedDocument] = []
        self.results: dict[str, StoreResult] = {}
        self.since = time.monotonic()

    def add(self, prepared: PreparedDocument) -> None:
        self.documents.append(prepared)
        if time.monotonic() - self.since >= WRITE_AFTER_S:
            self.write()

    def write(self) -> None:
        batch, self.documents = self.documents, []
        self.since = time.monotonic()
        if not batch:
            return
        with session_scope() as session:
            written = write_documents(
                session, tenant_id=self.tenant_id, prepared=batch, store=self.store
            )
        self.results |= {p.document.source: r for p, r in zip(batch, written, strict=True)}


def ingest_documents(
    documents: Sequence[LoadedDocument],
    *,
    tenant_id: str,
    embedder: Embedder,
    settings: KbSettings,
) -> list[DocumentResult]:
    """Store a group of documents; per document its result, why it was rejected, or why it
    failed. A failing document never takes another down with it."""
    store = store_for(embedder)
    with session_scope() as session:
        stored = stored_versions(
            session, tenant_id=tenant_id, sources=[d.source for d in documents]
        )
        same = {
            d.source: stored[d.source][0]
            for d in documents
            if d.source in stored and stored[d.source][1] == content_hash(d.text)
        }
        incomplete = documents_missing_vectors(session, store, document_ids=list(same.values()))
    results: dict[str, DocumentResult] = {}
    pending = _PendingWrites(tenant_id=tenant_id, store=store)
    try:
        for doc in documents:
            stored_id = same.get(doc.source)
            try:
                if stored_id is not None and stored_id in incomplete:
                    results[doc.source] = embed_missing(
                        document_id=stored_id,
                        tenant_id=tenant_id,
                        store=store,
                        embedder=embedder,
                        batch=settings.embed_batch,
                    )
                elif stored_id is not None:
                    results[doc.source] = StoreResult(Outcome.UNCHANGED, 0)
                else:
                    pending.add(prepare_document(doc, embedder=embedder, settings=settings))
            except RejectedDocument as exc:
                results[doc.source] = exc
            except DOCUMENT_FAILURES as exc:
                results[doc.source] = FailedDocument(doc.source, str(exc), exc)
    finally:
        pending.write()  # also when a failure no document can pass ends the ingest
    results |= pending.results
    return [results[d.source] for d in documents]


def ingest_document(
    document: LoadedDocument, *, tenant_id: str, embedder: Embedder, settings: KbSettings
) -> StoreResult:
    """Store one document; RejectedDocument if it has nothing to index, and the provider's
    error if its embedding failed."""
    [result] = ingest_documents(
        [document], tenant_id=tenant_id, embedder=embedder, settings=settings
    )
    if isinstance(result, RejectedDocument):
        raise result
    if isinstance(result, FailedDocument):
        assert result.error is not None
        raise result.error
    return result


def _groups(
    sources: Iterable[DocumentSource],
    *,
    settings: KbSettings,
    report: IngestReport,
    on_progress: ProgressCallback | None,
) -> Iterator[_Group]:
    """Read each file (rejecting the bad ones) and group the rest by estimated chunks."""
    group = _Group()
    for source in sources:
        try:
            document = read_document(source, max_bytes=settings.max_file_bytes)
        except RejectedDocument as exc:
            report.rejected.append(Rejected(source.source, exc.reason, exc.detail))
            if on_progress:
                on_progress(source.source, Outcome.REJECTED)
            continue
        group.documents.append(document)
        group.chunk_estimate += 1 + len(document.text) // settings.chunk_chars
        if group.chunk_estimate >= WRITE_GROUP_CHUNKS:
            yield group
            group = _Group()
    if group.documents:
        yield group


def ingest_sources(
    sources: Iterable[DocumentSource],
    *,
    tenant_id: str,
    embedder: Embedder,
    report: IngestReport,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest documents in this process, a group at a time."""
    settings = get_settings().kb
    for group in _groups(sources, settings=settings, report=report, on_progress=on_progress):
        results = ingest_documents(
            group.documents, tenant_id=tenant_id, embedder=embedder, settings=settings
        )
        for document, result in zip(group.documents, results, strict=True):
            if isinstance(result, RejectedDocument):
                report.rejected.append(Rejected(document.source, result.reason, result.detail))
                outcome = Outcome.REJECTED
            elif isinstance(result, FailedDocument):
                report.failed.append(result)
                outcome = Outcome.FAILED
            else:
                report.count(result)
                outcome = result.outcome
            if on_progress:
                on_progress(document.source, outcome)
    return report


def ingest_paths(
    paths: Iterable[Path],
    *,
    tenant_id: str,
    embedder: Embedder,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest files and folders inline."""
    started = time.perf_counter()
    with session_scope() as session:
        require_tenant(session, tenant_id)
    found = discover(paths)
    report = IngestReport(rejected=found.rejected, skipped=found.skipped)
    ingest_sources(
        found.sources,
        tenant_id=tenant_id,
        embedder=embedder,
        report=report,
        on_progress=on_progress,
    )
    if report.changed:
        knowledge_base_changed(tenant_id)
    report.seconds = time.perf_counter() - started
    return report


def knowledge_base_changed(tenant_id: str) -> None:
    """What follows a change of the tenant's documents: the acronym aliases of its chunks
    are recomputed from the definitions in all of them."""
    with session_scope() as session:
        refresh_aliases(session, tenant_id)


# --------------------------------------------------------------------------- listing


def list_documents(session: Session, tenant_id: str) -> list[KbDocument]:
    require_tenant(session, tenant_id)
    return list(
        session.scalars(
            select(KbDocument).where(KbDocument.tenant_id == tenant_id).order_by(KbDocument.source)
        )
    )


def embedded_models(session: Session, tenant_id: str) -> dict[uuid.UUID, list[str]]:
    """For each of the tenant's documents, the embedding models that have vectors for it."""
    models: dict[uuid.UUID, list[str]] = {}
    for store in STORES:
        rows = session.execute(
            text(
                f"SELECT DISTINCT c.document_id FROM {store.table} v "
                "JOIN kb_chunks c ON c.id = v.chunk_id WHERE v.tenant_id = :t"
            ),
            {"t": tenant_id},
        ).scalars()
        for document_id in rows:
            models.setdefault(document_id, []).append(store.model)
    return models


def delete_document(session: Session, *, tenant_id: str, source: str) -> bool:
    """Delete the document named as ``kb list`` shows it, or by any path to its file
    (relative or absolute: it is normalised as ingestion normalises it)."""
    require_tenant(session, tenant_id)
    result = session.execute(
        delete(KbDocument)
        .where(
            KbDocument.tenant_id == tenant_id,
            KbDocument.source.in_({source, source_name(source)}),
        )
        .returning(KbDocument.id)
    )
    return result.first() is not None
