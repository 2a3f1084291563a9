"""Held and interrupted turns: turns.released_at, turns.carried_message, ix_turns_held

A turn accepted over its tenant's admission limit is held (status ``held``) until there is
room; ``released_at`` is when it was let go, and its budget runs from then. A turn that
interrupted earlier turns of its conversation (``in_flight_policy = interrupt``) carries
their messages in ``carried_message``. The relay finds the held turns of every tenant, in
order, through a partial index that holds only them.

Adding nullable columns without defaults is a catalog change only. The index is built
CONCURRENTLY, outside the migration's transaction (turns is the live table); an invalid
index left by a failed build is dropped first.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 15:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("turns", sa.Column("released_at", sa.Float(), nullable=True))
    op.add_column("turns", sa.Column("carried_message", sa.Text(), nullable=True))
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_turns_held", table_name="turns", postgresql_concurrently=True, if_exists=True
        )
        op.create_index(
            "ix_turns_held",
            "turns",
            ["tenant_id", "accepted_at"],
            unique=False,
            postgresql_where=sa.text("status = 'held'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_turns_held", table_name="turns", postgresql_concurrently=True, if_exists=True
        )
    op.drop_column("turns", "carried_message")
    op.drop_column("turns", "released_at")
