"""Acronym aliases in the chunks' full text, and each tenant's last calibration

kb_chunks.aliases holds, per chunk, the other spelling of every acronym the tenant's
documents define ("single sign-on (SSO)"): "SSO" for a chunk that says only "single
sign-on", and the other way round. The full-text vector includes them, so a question in
either spelling finds the chunk; it is computed at ingest, never per question.

Recomputing the full-text vector rewrites kb_chunks and rebuilds its GIN index. Chunks
stored before get their aliases at the tenant's next ingest that changes its documents, or
on `chordline kb calibrate --tenant T`.

tenants.calibration holds the report of the tenant's last threshold calibration (when,
on how many derived questions, the thresholds it set and their accuracy on them).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 14:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_ALIASES = "to_tsvector('english', heading || ' ' || text || ' ' || aliases)"
WITHOUT_ALIASES = "to_tsvector('english', heading || ' ' || text)"


def _full_text(expression: str) -> None:
    op.drop_index("ix_kb_chunks_tsv", table_name="kb_chunks", postgresql_using="gin")
    op.drop_column("kb_chunks", "tsv")
    op.add_column(
        "kb_chunks",
        sa.Column("tsv", postgresql.TSVECTOR(), sa.Computed(expression, persisted=True), nullable=False),
    )
    op.create_index("ix_kb_chunks_tsv", "kb_chunks", ["tsv"], unique=False, postgresql_using="gin")


def upgrade() -> None:
    op.add_column("kb_chunks", sa.Column("aliases", sa.Text(), server_default="", nullable=False))
    _full_text(WITH_ALIASES)
    op.add_column("tenants", sa.Column("calibration", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("tenants", "calibration")
    _full_text(WITHOUT_ALIASES)
    op.drop_column("kb_chunks", "aliases")
