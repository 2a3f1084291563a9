"""Ingest files into a tenant's knowledge base.

A document is identified by its source (its path, as given); its content hash decides what
happens: the same content again changes nothing, changed content replaces the document's
chunks in one transaction. Bad files are reported by name and the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.models import KbChunk, KbDocument
from shared.db.session import session_scope
from shared.db.tenants import require_tenant
from shared.kb.chunking import chunk_document, document_title
from shared.providers.base import Embedder

KINDS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
}


@dataclass(frozen=True)
class DocumentSource:
    source: str
    path: Path


@dataclass(frozen=True)
class Rejected:
    source: str
    reason: str


@dataclass
class IngestReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    chunks: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def documents(self) -> int:
        return self.added + self.replaced + self.unchanged


def discover(paths: Iterable[Path]) -> tuple[list[DocumentSource], list[Rejected]]:
    """Files under the given files or folders, with a supported extension."""
    found: list[DocumentSource] = []
    rejected: list[Rejected] = []
    for path in paths:
        if not path.exists():
            rejected.append(Rejected(str(path), "does not exist"))
        elif path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.suffix.lower() in KINDS:
                    found.append(DocumentSource(str(child), child))
        elif path.suffix.lower() in KINDS:
            found.append(DocumentSource(str(path), path))
        else:
            rejected.append(
                Rejected(
                    str(path),
                    f"unsupported file type {path.suffix or '(none)'!r}; "
                    f"supported: {', '.join(sorted(KINDS))}",
                )
            )
    return found, rejected


def read_document(path: Path, *, max_bytes: int) -> str:
    """The file's text, or ValueError naming what is wrong with it."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(
                f"is {size} bytes; the limit is {max_bytes} (CHORDLINE_KB_MAX_FILE_BYTES)"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from exc
    if b"\x00" in raw[:8192]:
        raise ValueError("looks binary (contains NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 (invalid byte at offset {exc.start})") from exc
    if not text.strip():
        raise ValueError("is empty")
    return text


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def store_document(
    session: Session,
    *,
    tenant_id: str,
    source: str,
    text: str,
    kind: str,
    embedder: Embedder,
    chunk_chars: int,
    embed_batch: int,
) -> tuple[str, int]:
    """('added' | 'replaced' | 'unchanged', chunk count) for one document."""
    digest = content_hash(text)
    existing = session.execute(
        select(KbDocument.id, KbDocument.content_hash)
        .where(KbDocument.tenant_id == tenant_id, KbDocument.source == source)
        .with_for_update()
    ).first()
    if existing and existing.content_hash == digest:
        return "unchanged", 0
    chunks = chunk_document(text, kind=kind, size=chunk_chars)
    if not chunks:
        raise ValueError("has no text to index")
    vectors: list[list[float]] = []
    for start in range(0, len(chunks), embed_batch):
        batch = chunks[start : start + embed_batch]
        vectors.extend(embedder.embed([f"{c.heading}\n{c.text}" for c in batch]))
    title = document_title(text, kind=kind, fallback=Path(source).stem)
    if existing:
        doc_id = existing.id
        session.execute(delete(KbChunk).where(KbChunk.document_id == doc_id))
        session.execute(
            update(KbDocument)
            .where(KbDocument.id == doc_id)
            .values(content_hash=digest, title=title, chunk_count=len(chunks))
        )
    else:
        doc_id = uuid.uuid4()
        session.add(
            KbDocument(
                id=doc_id,
                tenant_id=tenant_id,
                source=source,
                title=title,
                content_hash=digest,
                chunk_count=len(chunks),
            )
        )
        session.flush()
    session.add_all(
        KbChunk(
            tenant_id=tenant_id,
            document_id=doc_id,
            ordinal=c.ordinal,
            heading=c.heading[:500],
            text=c.text,
            content_hash=content_hash(c.text),
            embedding=vector,
        )
        for c, vector in zip(chunks, vectors, strict=True)
    )
    return ("replaced" if existing else "added"), len(chunks)


def ingest_file(*, tenant_id: str, source: DocumentSource, embedder: Embedder) -> tuple[str, int]:
    settings = get_settings().kb
    text = read_document(source.path, max_bytes=settings.max_file_bytes)
    with session_scope() as session:
        return store_document(
            session,
            tenant_id=tenant_id,
            source=source.source,
            text=text,
            kind=KINDS[source.path.suffix.lower()],
            embedder=embedder,
            chunk_chars=settings.chunk_chars,
            embed_batch=settings.embed_batch,
        )


def ingest_paths(
    paths: Iterable[Path],
    *,
    tenant_id: str,
    embedder: Embedder,
    on_progress: Callable[[DocumentSource, str], None] | None = None,
) -> IngestReport:
    """Ingest files and folders inline, one transaction per document."""
    started = time.perf_counter()
    with session_scope() as session:
        require_tenant(session, tenant_id)
    sources, rejected = discover(paths)
    report = IngestReport(rejected=rejected)
    for source in sources:
        try:
            outcome, chunks = ingest_file(tenant_id=tenant_id, source=source, embedder=embedder)
        except ValueError as exc:
            report.rejected.append(Rejected(source.source, str(exc)))
            outcome = "rejected"
        else:
            setattr(report, outcome, getattr(report, outcome) + 1)
            report.chunks += chunks
        if on_progress:
            on_progress(source, outcome)
    report.seconds = time.perf_counter() - started
    return report


def list_documents(session: Session, tenant_id: str) -> list[KbDocument]:
    require_tenant(session, tenant_id)
    return list(
        session.scalars(
            select(KbDocument).where(KbDocument.tenant_id == tenant_id).order_by(KbDocument.source)
        )
    )


def delete_document(session: Session, *, tenant_id: str, source: str) -> bool:
    require_tenant(session, tenant_id)
    result = session.execute(
        delete(KbDocument)
        .where(KbDocument.tenant_id == tenant_id, KbDocument.source == source)
        .returning(KbDocument.id)
    )
    return result.first() is not None
