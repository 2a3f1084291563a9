"""Vector stores: one table per embedding model and dimension.

Vectors of different models live in different tables with their own HNSW index, so a query
embedded by one model is never compared with vectors of another. Ingestion writes to, and
search reads from, the store of the embedder in use (``embedder.model`` and ``embedder.dim``);
a model without a store is refused with a clear error instead of being mixed into another.
Adding a model means adding its table in a migration and a line here.
"""

from __future__ import annotations

import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types import TypeInfo
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


class QueryVector:
    """A question's embedding as a statement parameter, sent in pgvector's binary form: the
    text form of 384 floats costs 60 times more CPU to write, and Postgres more to read."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[float]) -> None:
        self.values = values


class _QueryVectorDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: QueryVector) -> bytes:
        # pgvector's binary input: dimensions and an unused word (int16 each), then float4s
        count = len(obj.values)
        return struct.pack(f">HH{count}f", count, 0, *obj.values)


_ready: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
_ready_lock = threading.Lock()


def send_query_vectors(conn: psycopg.Connection[Any]) -> None:
    """Let ``conn`` send QueryVector parameters: looks the vector type up once per connection
    (its oid differs between databases)."""
    with _ready_lock:
        if conn in _ready:
            return
    info = TypeInfo.fetch(conn, "vector")
    if info is None:
        raise PermanentError("the pgvector extension is not installed in this database")
    dumper = type("QueryVectorDumper", (_QueryVectorDumper,), {"oid": info.oid})
    conn.adapters.register_dumper(QueryVector, dumper)
    with _ready_lock:
        _ready.add(conn)


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
