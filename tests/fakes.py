"""In-memory fakes of the runtime's resources (shared/runtime.py), so that a stage's logic
runs in a unit test without Postgres or Redis.

``InMemoryTurnStore`` keeps turns, their conversations and spans in dictionaries and
writes under the same rules as Postgres does: the stage's grant and the status transitions
of shared/turn_state.py, each output written once (the stage's output column still
empty), a status moved only from a status the stage may move it from.
tests/integration/test_turn_store_contract.py runs the same cases against both stores.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

from shared.db.models import Turn
from shared.db.spans import SpanRecord
from shared.db.turns import TurnRecord, stage_message
from shared.errors import IllegalTransition, TurnNotFound
from shared.providers.base import ConversationContext
from shared.runtime import runtime
from shared.schemas import ConversationMemory, Qualification, Stage, TenantSettings, TurnStatus
from shared.turn.store import HISTORY_TURNS, TURN_STORE, StageInputs
from shared.turn_state import GRANTS, STAGE_ACTORS, STAGE_OUTPUT, Table, check_write, sources

TURN_COLUMNS = tuple(column.name for column in Turn.__table__.columns)


class InMemoryTurnStore:
    """The turn store of one test: turns, conversations and spans in memory."""

    def __init__(self) -> None:
        self.turns: dict[str, SimpleNamespace] = {}
        self.settings: dict[str, TenantSettings] = {}
        self.memory: dict[uuid.UUID, ConversationMemory] = {}
        self.qualification: dict[uuid.UUID, Qualification] = {}
        self.spans: list[SpanRecord] = []

    def add_turn(
        self,
        message: str,
        *,
        tenant: str = "t-fake",
        settings: TenantSettings | None = None,
        status: TurnStatus = TurnStatus.QUEUED,
        conversation: uuid.UUID | None = None,
    ) -> str:
        """A turn as enqueue_turn leaves it (accepted now), with its conversation."""
        turn_id = str(uuid.uuid4())
        conversation_id = conversation or uuid.uuid4()
        earlier = [t for t in self.turns.values() if t.conversation_id == conversation_id]
        row = SimpleNamespace(**dict.fromkeys(TURN_COLUMNS))
        row.id, row.tenant_id, row.conversation_id = uuid.UUID(turn_id), tenant, conversation_id
        row.seq, row.message, row.topology = len(earlier) + 1, message, "parallel"
        row.status, row.accepted_at, row.attempts, row.usage = status.value, time.time(), 0, {}
        self.turns[turn_id] = row
        self.settings.setdefault(tenant, settings or TenantSettings())
        self.memory.setdefault(conversation_id, ConversationMemory())
        self.qualification.setdefault(conversation_id, Qualification.UNKNOWN)
        return turn_id

    def _row(self, turn_id: str) -> SimpleNamespace:
        row = self.turns.get(turn_id)
        if row is None:
            raise TurnNotFound(f"turn {turn_id} does not exist")
        return row

    def turn(self, turn_id: str) -> TurnRecord:
        return cast(TurnRecord, SimpleNamespace(**vars(self._row(turn_id))))

    def stage_inputs(self, turn_id: str, *, conversation: bool = True) -> StageInputs:
        turn = self.turn(turn_id)
        context = ConversationContext(tenant_id=turn.tenant_id, message=stage_message(turn))
        if conversation:
            context = replace(
                context,
                qualification_status=self.qualification[turn.conversation_id],
                memory=self.memory[turn.conversation_id],
                history=self._history(turn),
            )
        return StageInputs(turn=turn, settings=self.settings[turn.tenant_id], context=context)

    def _history(self, turn: TurnRecord) -> list[dict[str, str]]:
        earlier = sorted(
            (
                t
                for t in self.turns.values()
                if t.conversation_id == turn.conversation_id
                and t.seq < turn.seq
                and t.status != TurnStatus.CANCELLED.value
            ),
            key=lambda t: t.seq,
        )[-HISTORY_TURNS:]
        return [{"message": t.message, "reply": t.agent_response or ""} for t in earlier]

    def write_output(
        self,
        *,
        stage: Stage,
        turn_id: str,
        values: dict[str, Any],
        span: SpanRecord,
        usage: dict[str, int] | None,
    ) -> bool:
        actor = STAGE_ACTORS[stage]
        check_write(actor, Table.TURNS, set(values) | ({"usage"} if usage else set()))
        row = self._row(turn_id)
        if getattr(row, STAGE_OUTPUT[stage]) is not None:
            return False  # another delivery wrote it first: that one stands
        if GRANTS[actor].transitions:
            if "status" not in values:
                raise IllegalTransition(f"{actor.value!r} writes the turn's status with its output")
            if TurnStatus(row.status) not in sources(actor, TurnStatus(values["status"])):
                return False  # ended, or not yet where this stage may move it from
        for name, value in values.items():
            setattr(row, name, value)
        if usage:
            row.usage = {**row.usage, stage.value: usage}
        self.spans.append(span)
        return True


@contextmanager
def installed_turn_store() -> Iterator[InMemoryTurnStore]:
    """An in-memory turn store as this process's, for the duration of the block."""
    store = InMemoryTurnStore()
    runtime().install(TURN_STORE, store)
    try:
        yield store
    finally:
        runtime().discard(TURN_STORE)
