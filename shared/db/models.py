"""Database models: Postgres is the system of record, Redis only carries messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.schemas import Agent, KbLevel, Phase, Qualification, Topology, TurnStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def one_of(column: str, values: type[StrEnum]) -> CheckConstraint:
    """The column holds one of the enum's values (or NULL): ``ck_<table>_<column>``
    (migration 0011 added them)."""
    listed = ", ".join(f"'{value.value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _now()
    # The report of the tenant's last threshold calibration (shared/kb/selfcalibration.py).
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        one_of("qualification_status", Qualification),
        {"postgresql_with": {"fillfactor": 70}},  # room for in-page (HOT) updates
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(128))
    next_seq: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    # The one turn of this conversation that may run now; later turns wait behind it.
    active_turn_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    qualification_status: Mapped[str] = mapped_column(String(32), server_default="unknown")
    contextual_memory: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq"),
        Index(
            "uq_turns_tenant_idempotency_key",
            "tenant_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index(
            "ix_turns_open_by_deadline",
            "status",
            "stage_deadline_at",
            postgresql_where=text("status IN ('queued', 'routed')"),
        ),
        Index("ix_turns_tenant_created", "tenant_id", "created_at"),
        # Arrivals of every tenant (re-scoring's live-load sample, twice a second per tenant
        # per process): a range on created_at alone, which the index above cannot serve.
        Index("ix_turns_created", "created_at"),
        # Turns held over their tenant's admission limit, per tenant in order (the relay).
        Index(
            "ix_turns_held",
            "tenant_id",
            "accepted_at",
            postgresql_where=text("status = 'held'"),
        ),
        # The statuses (shared/turn_state.py moves a turn between them) and the other
        # columns that hold one of a fixed set of values.
        one_of("status", TurnStatus),
        one_of("topology", Topology),
        one_of("phase", Phase),
        one_of("proposed_agent", Agent),
        one_of("kb_information_level", KbLevel),
        one_of("next_agent", Agent),
        # Four stages update each row: leave room for those that change no indexed column
        # to be done in place (HOT), writing no index entries.
        {"postgresql_with": {"fillfactor": 70}},
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    # the messages of the turns this one interrupted (in_flight_policy = interrupt)
    carried_message: Mapped[str | None] = mapped_column(Text)
    topology: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _now()
    accepted_at: Mapped[float] = mapped_column(Float)  # client clock (epoch s) at enqueue
    stage_deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[float | None] = mapped_column(Float)  # a held turn let go (epoch s)
    # orchestrator
    phase: Mapped[str | None] = mapped_column(String(32))
    intent: Mapped[str | None] = mapped_column(String(64))
    proposed_agent: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column(Float)
    handoff: Mapped[bool | None] = mapped_column(Boolean)
    orchestration_note: Mapped[str | None] = mapped_column(Text)
    orchestrated_at: Mapped[float | None] = mapped_column(Float)
    # researcher
    research_results: Mapped[list[Any] | None] = mapped_column(JSONB)
    kb_information_level: Mapped[str | None] = mapped_column(String(8))
    research_note: Mapped[str | None] = mapped_column(Text)
    researched_at: Mapped[float | None] = mapped_column(Float)
    # merge
    next_agent: Mapped[str | None] = mapped_column(String(32))
    routing_reason: Mapped[str | None] = mapped_column(Text)
    routed_at: Mapped[float | None] = mapped_column(Float)
    # agent
    agent_response: Mapped[str | None] = mapped_column(Text)
    agent_fallback: Mapped[bool | None] = mapped_column(Boolean)
    agent_note: Mapped[str | None] = mapped_column(Text)
    # the conversation's memory as this turn's agent left it (its facts as its extractor,
    # patterns or a model, read them): what re-scoring and the trace read of it
    memory_after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    completed_at: Mapped[float | None] = mapped_column(Float)
    # the end of a turn that did not complete
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # accounting: {"orchestrator": {"calls": 1, "tokens_in": 10, "tokens_out": 5}, ...}
    usage: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class TurnOutbox(Base):
    """Dispatch intents, written in the same transaction as the turn they start: one per
    turn."""

    __tablename__ = "turn_outbox"
    __table_args__ = (
        Index(
            "ix_turn_outbox_pending", "created_at", postgresql_where=text("dispatched_at IS NULL")
        ),
    )

    turn_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = _now()
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TurnSpan(Base):
    """One stage of one turn: where and when it ran, and what it wrote."""

    __tablename__ = "turn_spans"

    turn_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("turns.id", ondelete="CASCADE"), primary_key=True
    )
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer)
    enqueued_at: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float)
    simulated_ms: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(32))
    fields_written: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    calls: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    tokens_in: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    tokens_out: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class ApiKey(Base):
    """An HTTP API key of one tenant: only its SHA-256 is stored, beside a short public
    prefix that names it in listings and logs."""

    __tablename__ = "api_keys"

    prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class KbDocument(Base):
    __tablename__ = "kb_documents"
    __table_args__ = (UniqueConstraint("tenant_id", "source"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(1000))
    title: Mapped[str] = mapped_column(String(500))
    content_hash: Mapped[str] = mapped_column(String(64))
    chunk_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class KbChunk(Base):
    """A chunk of a document, with its full-text vector. Its embeddings live in the vector
    tables below, one per embedding model and dimension."""

    __tablename__ = "kb_chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal"),
        Index("ix_kb_chunks_tsv", "tsv", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("kb_documents.id", ondelete="CASCADE")
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(String(500), server_default="")
    text: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    # The other spelling of each acronym the tenant's documents define (shared/kb/acronyms.py)
    aliases: Mapped[str] = mapped_column(Text, server_default="")
    tsv: Mapped[Any] = mapped_column(
        TSVECTOR,
        Computed(
            "to_tsvector('english', heading || ' ' || text || ' ' || aliases)", persisted=True
        ),
    )


def _hnsw_index(table: str) -> Index:
    return Index(
        f"ix_{table}_embedding_hnsw",
        "embedding",
        postgresql_using="hnsw",
        # ef_construction 200 (pgvector's default is 64): a better graph finds the true
        # neighbours with a shorter search; measured with `chordline kb bench`.
        postgresql_with={"m": 16, "ef_construction": 200},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


class KbVectorColumns:
    """One chunk's embedding by one model. The tenant is repeated here so that the vector
    search filters by tenant without a join. Vectors are stored PLAIN (see the migrations):
    with out-of-line storage the planner never picks the HNSW index under a tenant filter."""

    chunk_id: Mapped[int] = mapped_column(
        ForeignKey("kb_chunks.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)


class KbVectorLocalHash384(KbVectorColumns, Base):
    """Vectors of the offline embedder, ``local-hash-384``."""

    __tablename__ = "kb_vectors_local_hash_384"
    __table_args__ = (_hnsw_index(__tablename__),)

    embedding: Mapped[Any] = mapped_column(Vector(384))


class KbVectorTextEmbedding3Small1536(KbVectorColumns, Base):
    """Vectors of OpenAI's ``text-embedding-3-small`` at its full 1536 dimensions."""

    __tablename__ = "kb_vectors_text_embedding_3_small_1536"
    __table_args__ = (_hnsw_index(__tablename__),)

    embedding: Mapped[Any] = mapped_column(Vector(1536))


class KbIngestJob(Base):
    """One document queued for the ``ingest`` workers: its text travels through Postgres,
    not through the broker, and the outcome comes back here for the caller to read."""

    __tablename__ = "kb_ingest_jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(1000))
    kind: Mapped[str] = mapped_column(String(16))
    body: Mapped[str | None] = mapped_column(Text)  # cleared once the document is stored
    embedding_model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    outcome: Mapped[str | None] = mapped_column(String(16))
    chunks: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
