"""Vector stores: one table per embedding model and dimension.

Vectors of different models live in different tables with their own HNSW index, so a query
embedded by one model is never compared with vectors of another. Ingestion writes to, and
search reads from, the store of the embedder in use (``embedder.model`` and ``embedder.dim``);
a model without a store is refused with a clear error instead of being mixed into another.
Adding a model means adding its table in a migration and a line here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.db.models import KbVectorLocalHash384, KbVectorTextEmbedding3Small1536
from shared.errors import PermanentError
from shared.providers.base import Embedder


@dataclass(frozen=True)
class VectorStore:
    model: str
    dim: int
    table: str


STORES: tuple[VectorStore, ...] = (
    VectorStore("local-hash-384", 384, KbVectorLocalHash384.__tablename__),
    VectorStore("text-embedding-3-small", 1536, KbVectorTextEmbedding3Small1536.__tablename__),
)


class NoVectorStore(PermanentError):
    """No vector store exists for this embedding model and dimension."""


def vector_store(*, model: str, dim: int) -> VectorStore:
    for store in STORES:
        if store.model == model and store.dim == dim:
            return store
    known = ", ".join(f"{s.model} ({s.dim} dims)" for s in STORES)
    raise NoVectorStore(
        f"no vector store for embedding model {model!r} with {dim} dimensions; known: {known}. "
        "Vectors of different models are never mixed: add a table for it in a migration "
        "and register it in shared/kb/stores.py"
    )


def store_for(embedder: Embedder) -> VectorStore:
    return vector_store(model=embedder.model, dim=embedder.dim)


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, ``[0.1,0.2,...]``."""
    return "[" + ",".join(map(str, vector)) + "]"


def write_vectors(
    session: Session,
    store: VectorStore,
    *,
    tenant_id: str,
    rows: Sequence[tuple[int, Sequence[float]]],
) -> None:
    """Insert (chunk_id, vector) rows with COPY: one round trip for any number of rows."""
    if not rows:
        return
    raw: Any = session.connection().connection.driver_connection
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {store.table} (chunk_id, tenant_id, embedding) FROM STDIN") as copy,
    ):
        for chunk_id, vector in rows:
            copy.write_row((chunk_id, tenant_id, vector_literal(vector)))


def chunks_without_vectors(session: Session, store: VectorStore, *, document_id: Any) -> list[Any]:
    """The document's chunks that this store has no vector for (id, heading, text)."""
    return list(
        session.execute(
            text(f"""
            SELECT c.id, c.heading, c.text FROM kb_chunks c
            WHERE c.document_id = :d
              AND NOT EXISTS (SELECT 1 FROM {store.table} v WHERE v.chunk_id = c.id)
            ORDER BY c.ordinal
            """),
            {"d": document_id},
        ).all()
    )
