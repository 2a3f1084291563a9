"""Where the stages read and write their turn: the ``TurnStore``.

A stage reads everything it needs before its model call in one round trip
(``stage_inputs``), and writes its own fields with its span once (``write_output``, under
the rules of shared/turn_state.py). ``PostgresTurnStore`` does both with plain SQL on the
hot path's direct connections; it is the runtime's resource by default (shared/runtime.py),
and a test can install an in-memory store instead, to run a stage's logic without services.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol, cast

from psycopg.rows import namedtuple_row

from shared.config import get_settings
from shared.db.direct import direct_connection
from shared.db.spans import SpanRecord
from shared.db.tenants import tenant_settings_from
from shared.db.turns import TurnRecord, stage_message, write_stage_output
from shared.errors import TurnNotFound
from shared.providers.base import ConversationContext
from shared.runtime import Resource, runtime
from shared.schemas import ConversationMemory, Qualification, Stage, TenantSettings


def turn_deadline(turn: TurnRecord) -> float:
    """Epoch seconds by which the turn must have ended: accepted (or, for a turn held over
    its tenant's admission limit, let go) + budget."""
    return max(turn.accepted_at, turn.released_at or 0.0) + get_settings().turn.budget_s


@dataclass(frozen=True)
class StageInputs:
    """Everything a stage reads before it calls a model, fetched in one round trip."""

    turn: TurnRecord
    settings: TenantSettings
    context: ConversationContext

    @property
    def deadline(self) -> float:
        return turn_deadline(self.turn)


HISTORY_TURNS = 6


# Every stage reads this first: plain SQL on a direct connection, prepared once per
# connection, rows as named tuples. The tenant's settings come as text, so that parsing
# them is remembered per distinct document rather than done for every stage.
_STAGE_INPUTS = f"""
    SELECT t.*,
           c.qualification_status AS conversation_qualification,
           c.contextual_memory AS conversation_memory,
           tn.settings::text AS tenant_settings,
           (SELECT coalesce(json_agg(json_build_object('message', h.message,
                                                       'reply', h.agent_response)
                                     ORDER BY h.seq), '[]'::json)
              FROM (SELECT seq, message, agent_response FROM turns
                     WHERE conversation_id = t.conversation_id AND seq < t.seq
                       AND status <> 'cancelled'
                     ORDER BY seq DESC LIMIT {HISTORY_TURNS}) h) AS conversation_history
      FROM turns t
      JOIN conversations c ON c.id = t.conversation_id
      JOIN tenants tn ON tn.id = t.tenant_id
     WHERE t.id = %(turn_id)s
"""


# The researcher needs the message and the tenant, not the conversation.
_TURN_AND_TENANT = """
    SELECT t.*, tn.settings::text AS tenant_settings
      FROM turns t JOIN tenants tn ON tn.id = t.tenant_id
     WHERE t.id = %(turn_id)s
"""


class TurnStore(Protocol):
    """What the stages read of their turn, and how each writes its output."""

    def stage_inputs(self, turn_id: str, *, conversation: bool = True) -> StageInputs:
        """The turn, its tenant's settings and its conversation context (without
        ``conversation``: the message alone, no memory, no history). TurnNotFound if none."""
        ...

    def turn(self, turn_id: str) -> TurnRecord:
        """The turn as it is now. TurnNotFound if none."""
        ...

    def write_output(
        self,
        *,
        stage: Stage,
        turn_id: str,
        values: dict[str, Any],
        span: SpanRecord,
        usage: dict[str, int] | None,
    ) -> bool:
        """The stage's own fields and its span, once: False (nothing written) when another
        delivery wrote the output first or, for a stage that moves the status, when the
        turn is not in a status it may move from. OwnershipViolation or IllegalTransition
        for a write the stage's grant does not allow."""
        ...


class PostgresTurnStore:
    """The turn's row in Postgres: one statement, one round trip, for each call."""

    def stage_inputs(self, turn_id: str, *, conversation: bool = True) -> StageInputs:
        with direct_connection() as conn:
            found = (
                conn.cursor(row_factory=namedtuple_row)
                .execute(
                    _STAGE_INPUTS if conversation else _TURN_AND_TENANT,
                    {"turn_id": uuid.UUID(turn_id)},
                )
                .fetchone()
            )
        if found is None:
            raise TurnNotFound(f"turn {turn_id} does not exist")
        row: Any = found  # the turn's columns and the conversation's, by name
        context = ConversationContext(tenant_id=row.tenant_id, message=stage_message(row))
        if conversation:
            context = ConversationContext(
                tenant_id=row.tenant_id,
                message=stage_message(row),
                qualification_status=Qualification(row.conversation_qualification),
                memory=ConversationMemory.from_stored(row.conversation_memory),
                history=[
                    {"message": h["message"], "reply": h["reply"] or ""}
                    for h in row.conversation_history
                ],
            )
        settings = tenant_settings_from(row.tenant_settings)
        return StageInputs(turn=row, settings=settings, context=context)

    def turn(self, turn_id: str) -> TurnRecord:
        with direct_connection() as conn:
            row = (
                conn.cursor(row_factory=namedtuple_row)
                .execute(_TURN, {"turn_id": uuid.UUID(turn_id)})
                .fetchone()
            )
        if row is None:
            raise TurnNotFound(f"turn {turn_id} does not exist")
        return cast(TurnRecord, row)

    def write_output(
        self,
        *,
        stage: Stage,
        turn_id: str,
        values: dict[str, Any],
        span: SpanRecord,
        usage: dict[str, int] | None,
    ) -> bool:
        with direct_connection() as conn:
            return write_stage_output(
                conn, stage=stage, turn_id=turn_id, values=values, span=span, usage=usage
            )


_TURN = "SELECT * FROM turns WHERE id = %(turn_id)s"

TURN_STORE: Resource[TurnStore] = Resource("turn store", make=PostgresTurnStore)


def turn_store() -> TurnStore:
    """This process's turn store: Postgres, unless a test installed another."""
    return runtime().get(TURN_STORE)
