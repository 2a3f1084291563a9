"""Leaner turn tables: room for in-page updates, natural keys for spans and intents

Every turn updates its row four times (orchestrator, researcher, merge, agent) and its
conversation's row once. With pages packed full, an updated row version rarely fits on its
own page, and every such update writes a new entry into each of the table's indexes. At
fillfactor 70 the stages' updates that change no indexed column are done in place (HOT):
no index entries at all.

turn_spans and turn_outbox each had a serial id that nothing reads, a sequence to draw it
from, and a second index on turn_id. A span is identified by (turn, stage, attempt) and an
intent by its turn (a turn is dispatched by one intent): those become the primary keys, and
the serial ids and the extra indexes go. The new keys are built CONCURRENTLY, outside the
migration's transaction, then attached as primary keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 70


def upgrade() -> None:
    for table in ("turns", "conversations"):
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")
    # Keys that hold on rows written before: number repeated span attempts in order, keep
    # one intent per turn (its oldest).
    op.execute("""
        UPDATE turn_spans s SET attempt = r.n
        FROM (SELECT id, row_number() OVER (PARTITION BY turn_id, stage
                                            ORDER BY started_at, id) AS n
              FROM turn_spans) r
        WHERE s.id = r.id AND s.attempt <> r.n
    """)
    op.execute("""
        DELETE FROM turn_outbox o USING turn_outbox older
        WHERE o.turn_id = older.turn_id AND o.id > older.id
    """)
    with op.get_context().autocommit_block():
        for name, table, columns in (
            ("pk_turn_spans_natural", "turn_spans", "turn_id, stage, attempt"),
            ("pk_turn_outbox_natural", "turn_outbox", "turn_id"),
        ):
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({columns})")
    for table in ("turn_spans", "turn_outbox"):
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")
        op.execute(f"ALTER TABLE {table} DROP COLUMN id")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} "
            f"PRIMARY KEY USING INDEX pk_{table}_natural"
        )
        op.drop_index(f"ix_{table}_turn_id", table_name=table)


def downgrade() -> None:
    for table in ("turn_spans", "turn_outbox"):
        op.create_index(f"ix_{table}_turn_id", table, ["turn_id"], unique=False)
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")
        op.execute(f"ALTER TABLE {table} ADD COLUMN id BIGSERIAL")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
    for table in ("turns", "conversations"):
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
