"""CHECK constraints: a turn's status, a conversation's qualification, and the turn columns
that hold one of a fixed set of values

turns.status may only be one of the statuses shared/turn_state.py moves a turn between;
conversations.qualification_status one of the qualifications (shared/schemas.py
``Qualification``); turns.topology, phase, proposed_agent, kb_information_level and
next_agent one of their enum's values (or NULL). Every writer already writes only these.

turns and conversations are live tables: each constraint is added NOT VALID (a catalog
change, under a brief lock; new rows are checked from then on), then validated outside the
migration's transaction, which reads the existing rows under a lock that lets every read
and write go on. A constraint of the same name left by a run that failed half way is dropped
first. The lists are written out here, as they are at this revision.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AGENTS = (
    "discovery",
    "support",
    "technical_consultant",
    "adaptive_response",
    "content_generator",
)
CHECKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("turns", "status"): (
        "held",
        "waiting",
        "queued",
        "routed",
        "completed",
        "failed",
        "cancelled",
    ),
    ("turns", "topology"): ("parallel", "sequential", "kb_first"),
    ("turns", "phase"): (
        "opening",
        "discovery",
        "qualification",
        "technical_evaluation",
        "support",
        "content",
        "closing",
        "handoff",
    ),
    ("turns", "proposed_agent"): AGENTS,
    ("turns", "kb_information_level"): ("ACCURATE", "PARTIAL", "MISSING"),
    ("turns", "next_agent"): AGENTS,
    ("conversations", "qualification_status"): (
        "unknown",
        "engaged",
        "qualifying",
        "evaluating",
        "qualified",
        "customer",
        "handed_off",
    ),
}


def _name(table: str, column: str) -> str:
    return f"ck_{table}_{column}"


def upgrade() -> None:
    for (table, column), values in CHECKS.items():
        listed = ", ".join(f"'{value}'" for value in values)
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {_name(table, column)}")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {_name(table, column)} "
            f"CHECK ({column} IN ({listed})) NOT VALID"
        )
    with op.get_context().autocommit_block():
        for table, column in CHECKS:
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {_name(table, column)}")


def downgrade() -> None:
    for table, column in CHECKS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {_name(table, column)}")
