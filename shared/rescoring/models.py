"""The tables of re-scoring: one row per run, one row per (run, turn).

A result row is written when the run is created, with the turn's historical decision copied
in (``old_*``), and completed once by the batch that scores it (``new_*``, ``scored_at``).
The unique (run, turn) pair and the conditional completion (``WHERE scored_at IS NULL``)
make sure a turn is never scored twice within a run, whatever the broker re-delivers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base


class RescoreRun(Base):
    """What was asked (selection, stages, overrides), with what settings, and how it stands."""

    __tablename__ = "rescore_runs"
    __table_args__ = (Index("ix_rescore_runs_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # running | completed | cancelled
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    conversation: Mapped[str | None] = mapped_column(String(128))
    stages: Mapped[list[Any]] = mapped_column(JSONB)
    overrides: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)  # effective: tenant's + overrides
    batch_size: Mapped[int] = mapped_column(Integer)
    total_turns: Mapped[int] = mapped_column(Integer)
    total_batches: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RescoreResult(Base):
    """One turn of one run: its decision as it was, and as it would be now."""

    __tablename__ = "rescore_results"
    __table_args__ = (
        UniqueConstraint("run_id", "turn_id"),
        # Unscored rows by batch: what a batch task loads, what resume re-enqueues, and
        # what progress counts. It shrinks to nothing as the run completes.
        Index(
            "ix_rescore_results_unscored",
            "run_id",
            "batch",
            postgresql_where=text("scored_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rescore_runs.id", ondelete="CASCADE"))
    # No foreign key to turns on purpose: checking one would lock every selected live turn
    # row (FOR KEY SHARE) while the run is created. A deleted turn leaves its result behind.
    turn_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    batch: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    # as it was (copied from the turn when the run was created)
    old_phase: Mapped[str | None] = mapped_column(String(32))
    old_intent: Mapped[str | None] = mapped_column(String(64))
    old_proposed_agent: Mapped[str | None] = mapped_column(String(32))
    old_confidence: Mapped[float | None] = mapped_column(Float)
    old_level: Mapped[str | None] = mapped_column(String(8))
    old_top_score: Mapped[float | None] = mapped_column(Float)
    old_agent: Mapped[str | None] = mapped_column(String(32))
    old_routing_reason: Mapped[str | None] = mapped_column(Text)
    # as it would be now (written once, by the batch that scores the turn)
    new_phase: Mapped[str | None] = mapped_column(String(32))
    new_intent: Mapped[str | None] = mapped_column(String(64))
    new_proposed_agent: Mapped[str | None] = mapped_column(String(32))
    new_confidence: Mapped[float | None] = mapped_column(Float)
    new_level: Mapped[str | None] = mapped_column(String(8))
    new_top_score: Mapped[float | None] = mapped_column(Float)
    new_agent: Mapped[str | None] = mapped_column(String(32))
    new_routing_reason: Mapped[str | None] = mapped_column(Text)
    new_hits: Mapped[list[Any] | None] = mapped_column(JSONB)
    routing_changed: Mapped[bool | None] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(Text)  # fallbacks and re-run stages, if any
    usage: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
