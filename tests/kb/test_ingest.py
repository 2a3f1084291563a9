"""Ingestion on real Postgres: bad files reported by name while the rest goes in,
re-ingesting changes nothing, a changed file replaces its chunks, models never mix."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.session import session_scope
from shared.kb.documents import Rejection
from shared.kb.ingest import delete_document, ingest_paths, list_documents
from shared.kb.search import hybrid_search, tenant_sizes
from shared.kb.stores import NoVectorStore, store_for
from shared.providers.base import Usage
from shared.providers.local import LocalEmbedder
from tests.kb.conftest import write_docs

pytestmark = pytest.mark.integration

GOOD = {
    "guide.md": "# Guide\n\n## Setup\n\nInstall the agent. Then run it.\n\n## Use\n\nOpen the dashboard.",
    "faq.txt": "Refunds are issued within 14 days of a request.",
    "page.html": "<html><head><title>Page</title></head><body><h1>Page</h1><p>Hello.</p></body></html>",
}


class OtherModel:
    """A deterministic stand-in for a second embedding model with its own dimension."""

    name = "test"
    model = "text-embedding-3-small"
    dim = 1536

    def embed(
        self, texts: Sequence[str], *, usage: Usage | None = None, deadline: float | None = None
    ) -> list[list[float]]:
        vectors = []
        for t in texts:
            seed = hashlib.sha256(t.encode()).digest()
            raw = [((seed[i % 32] + i) % 17) - 8.0 for i in range(self.dim)]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vectors.append([v / norm for v in raw])
        return vectors


def vector_rows(table: str, tenant: str) -> int:
    with session_scope() as session:
        return int(
            session.execute(
                text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t"), {"t": tenant}
            ).scalar_one()
        )


def chunk_texts(tenant: str) -> list[str]:
    with session_scope() as session:
        return list(
            session.execute(
                text("SELECT text FROM kb_chunks WHERE tenant_id = :t ORDER BY id"), {"t": tenant}
            ).scalars()
        )


def test_good_files_go_in_and_every_bad_one_is_reported_by_name(
    empty_tenant: str, tmp_path: Path
) -> None:
    docs = write_docs(
        tmp_path / "docs",
        {
            **GOOD,
            "binary.md": b"\x00\x01\x02 not text",
            "late-nul.md": "# Late NUL\n\n" + "Readable text. " * 700 + "\x00 then more.",
            "empty.md": "\n\n",
            "latin1.txt": "na\xefve".encode("latin-1"),
            "tags-only.html": "<html><body><script>x()</script></body></html>",
            "image.png": b"\x89PNG",
        },
    )
    (docs / "dangling.md").symlink_to(docs / "missing-target.md")
    report = ingest_paths([docs], tenant_id=empty_tenant, embedder=LocalEmbedder())
    assert report.added == 3 and report.documents == 3
    assert report.chunks == len(chunk_texts(empty_tenant)) >= 4
    rejected = {Path(r.source).name: r.reason for r in report.rejected}
    assert rejected == {
        "binary.md": Rejection.BINARY,
        "late-nul.md": Rejection.BINARY,  # past the first 8 KB: Postgres would refuse it
        "empty.md": Rejection.EMPTY,
        "latin1.txt": Rejection.NOT_UTF8,
        "tags-only.html": Rejection.EMPTY,
        "dangling.md": Rejection.UNREADABLE,
    }
    assert [Path(s.source).name for s in report.skipped] == ["image.png"]
    assert vector_rows("kb_vectors_local_hash_384", empty_tenant) == report.chunks
    with session_scope() as session:
        titles = {d.title for d in list_documents(session, empty_tenant)}
    assert titles == {"Guide", "faq", "Page"}


def test_reingesting_changes_nothing_and_a_changed_file_replaces_its_chunks(
    empty_tenant: str, tmp_path: Path
) -> None:
    docs = write_docs(tmp_path / "docs", GOOD)
    first = ingest_paths([docs], tenant_id=empty_tenant, embedder=LocalEmbedder())
    chunks_before = chunk_texts(empty_tenant)
    again = ingest_paths([docs], tenant_id=empty_tenant, embedder=LocalEmbedder())
    assert (again.unchanged, again.added, again.replaced, again.chunks) == (3, 0, 0, 0)
    assert chunk_texts(empty_tenant) == chunks_before

    (docs / "faq.txt").write_text("Refunds are issued within 30 days. Exchanges are free.")
    changed = ingest_paths([docs], tenant_id=empty_tenant, embedder=LocalEmbedder())
    assert (changed.replaced, changed.unchanged) == (1, 2)
    texts = chunk_texts(empty_tenant)
    assert not any("14 days" in t for t in texts)
    assert any("30 days" in t for t in texts)
    assert len(texts) == first.chunks  # one chunk out, one in
    assert vector_rows("kb_vectors_local_hash_384", empty_tenant) == len(texts)


def test_deleting_a_document_removes_its_chunks_and_vectors(
    empty_tenant: str, tmp_path: Path
) -> None:
    docs = write_docs(tmp_path / "docs", GOOD)
    ingest_paths([docs], tenant_id=empty_tenant, embedder=LocalEmbedder())
    with session_scope() as session:
        source = next(d.source for d in list_documents(session, empty_tenant) if "faq" in d.source)
        assert delete_document(session, tenant_id=empty_tenant, source=source)
        assert not delete_document(session, tenant_id=empty_tenant, source=source)
    assert not any("Refunds" in t for t in chunk_texts(empty_tenant))
    assert vector_rows("kb_vectors_local_hash_384", empty_tenant) == len(chunk_texts(empty_tenant))


def test_each_embedding_model_writes_and_searches_its_own_vector_table(
    empty_tenant: str, tmp_path: Path
) -> None:
    docs = write_docs(tmp_path / "docs", GOOD)
    local, other = LocalEmbedder(), OtherModel()
    ingest_paths([docs], tenant_id=empty_tenant, embedder=local)
    chunks = len(chunk_texts(empty_tenant))
    assert vector_rows("kb_vectors_text_embedding_3_small_1536", empty_tenant) == 0

    # The same documents under another model: no new chunks, vectors in that model's table.
    switched = ingest_paths([docs], tenant_id=empty_tenant, embedder=other)
    assert (switched.embedded, switched.chunks) == (3, chunks)
    assert vector_rows("kb_vectors_text_embedding_3_small_1536", empty_tenant) == chunks
    assert vector_rows("kb_vectors_local_hash_384", empty_tenant) == chunks
    assert len(chunk_texts(empty_tenant)) == chunks
    again = ingest_paths([docs], tenant_id=empty_tenant, embedder=other)
    assert (again.unchanged, again.embedded) == (3, 0)

    tenant_sizes.forget()
    for embedder in (local, other):
        question = "How long do refunds take?"
        with session_scope() as session:
            hits = hybrid_search(
                session,
                tenant_id=empty_tenant,
                question=question,
                vector=embedder.embed([question])[0],
                store=store_for(embedder),
                limit=5,
                exact_below=1000,
                ef_search=40,
            )
        assert hits and all(h.vector_rank is not None for h in hits[:1])


def test_a_model_without_a_vector_table_is_refused_not_mixed(
    empty_tenant: str, tmp_path: Path
) -> None:
    class Shortened(OtherModel):
        dim = 512  # text-embedding-3-small shortened: another dimension, another table

    docs = write_docs(tmp_path / "docs", GOOD)
    with pytest.raises(NoVectorStore, match=r"'text-embedding-3-small' with 512 dimensions"):
        ingest_paths([docs], tenant_id=empty_tenant, embedder=Shortened())
    assert chunk_texts(empty_tenant) == []
