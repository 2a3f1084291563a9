"""The outbox: dispatch intents written with the turn, marked when the broker has them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Turn, TurnOutbox


class PendingDispatch(NamedTuple):
    """A committed turn whose workflow is to be published."""

    turn_id: str
    topology: str


_MARK_DISPATCHED = (
    "UPDATE turn_outbox SET dispatched_at = now() "
    "WHERE turn_id = ANY(%(turn_ids)s) AND dispatched_at IS NULL"
)


def mark_dispatched(conn: psycopg.Connection[Any] | Session, turn_ids: Sequence[str]) -> None:
    """Mark the intents of these turns dispatched, on a direct connection or in a session's
    transaction (the relay marks what it claimed in the transaction that holds the claim)."""
    if not turn_ids:
        return
    ids = [uuid.UUID(t) for t in turn_ids]
    if isinstance(conn, Session):
        conn.connection().exec_driver_sql(_MARK_DISPATCHED, {"turn_ids": ids})
    else:
        conn.execute(_MARK_DISPATCHED, {"turn_ids": ids})


def claim_undispatched(
    session: Session, *, older_than_s: float, limit: int
) -> list[PendingDispatch]:
    """Intents nobody dispatched: their producer died, or the broker was down.

    Rows are locked with SKIP LOCKED, so relays on several machines never take the same one.
    """
    rows = session.execute(
        select(TurnOutbox.turn_id, Turn.topology)
        .join(Turn, Turn.id == TurnOutbox.turn_id)
        .where(
            TurnOutbox.dispatched_at.is_(None),
            TurnOutbox.created_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
        )
        .order_by(TurnOutbox.created_at)
        .limit(limit)
        .with_for_update(of=TurnOutbox, skip_locked=True)
    ).all()
    return [PendingDispatch(str(row.turn_id), row.topology) for row in rows]
