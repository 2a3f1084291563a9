"""Each completed turn keeps the conversation memory its agent left

turns.memory_after holds the conversation's memory as the turn's agent committed it, with
the customer's facts as its extractor read them (patterns offline, a model's structured
output with OpenAI). Re-scoring and the trace read it instead of replaying the
conversation's earlier turns with patterns; turns completed before this revision have none
and are still replayed.

A nullable column without a default: a catalog change, no table rewrite.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 23:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("turns", sa.Column("memory_after", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("turns", "memory_after")
