"""ix_turns_created: an index on turns(created_at) for the all-tenant arrivals count

Re-scoring samples live load twice a second per tenant per process, counting the turns of
every tenant created in the last few seconds. (tenant_id, created_at) serves only the
per-tenant count; without this index the all-tenant count read the whole table.

Built CONCURRENTLY, outside the migration's transaction: turns is the live table, and a
plain CREATE INDEX would block every new turn for as long as the build takes. A build that
failed half way leaves an invalid index behind, so any index of that name is dropped first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_turns_created", table_name="turns", postgresql_concurrently=True, if_exists=True
        )
        op.create_index(
            "ix_turns_created", "turns", ["created_at"], unique=False, postgresql_concurrently=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_turns_created", table_name="turns", postgresql_concurrently=True, if_exists=True
        )
