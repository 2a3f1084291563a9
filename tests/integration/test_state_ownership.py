"""A stage that writes outside its own fields fails loudly, and writes nothing."""

from __future__ import annotations

import time

import pytest

from shared.client import enqueue_turn, wait_for_turn
from shared.db.direct import direct_connection
from shared.db.models import Turn, TurnSpan
from shared.db.session import session_scope
from shared.db.spans import SpanRecord
from shared.db.turns import load_turn, write_stage_output
from shared.errors import OwnershipViolation
from shared.schemas import Stage

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("stage", "foreign"),
    [
        (Stage.ORCHESTRATOR, {"kb_information_level": "ACCURATE"}),
        (Stage.RESEARCHER, {"proposed_agent": "support"}),
        (Stage.MERGE, {"agent_response": "hi"}),
        (Stage.AGENT, {"next_agent": "support"}),
    ],
)
def test_writing_a_foreign_field_raises_and_changes_nothing(
    workers: None, tenant: str, stage: Stage, foreign: dict[str, object]
) -> None:
    turn_id = enqueue_turn(tenant, "c1", "How much does the Growth plan cost?")
    before = wait_for_turn(turn_id, timeout=90)
    with (
        pytest.raises(OwnershipViolation, match=f"'{stage.value}' tried to write turns"),
        direct_connection() as conn,
    ):
        write_stage_output(
            conn, stage=stage, turn_id=turn_id, values=foreign, span=_span(turn_id, stage)
        )
    with session_scope() as session:
        turn = load_turn(session, turn_id)
        for column in foreign:
            assert getattr(turn, column) == getattr(before, column)


def _span(turn_id: str, stage: Stage) -> SpanRecord:
    return SpanRecord(turn_id=turn_id, stage=stage.value, started_at=time.time())


def _spans(turn_id: str) -> int:
    with session_scope() as session:
        return session.query(TurnSpan).filter(TurnSpan.turn_id == turn_id).count()


def _row(turn_id: str) -> dict[str, object]:
    with session_scope() as session:
        turn = load_turn(session, turn_id)
        return {column.key: getattr(turn, column.key) for column in Turn.__table__.columns}


def test_a_redelivered_stage_changes_nothing_twice(workers: None, tenant: str) -> None:
    turn_id = enqueue_turn(tenant, "c1", "How much does the Growth plan cost?")
    wait_for_turn(turn_id, timeout=90)
    before, spans_before = _row(turn_id), _spans(turn_id)
    assert before["intent"]  # the orchestrator's output is there for a redelivery to find
    with direct_connection() as conn:
        wrote = write_stage_output(
            conn,
            stage=Stage.ORCHESTRATOR,
            turn_id=turn_id,
            values={"intent": "overwritten"},
            span=_span(turn_id, Stage.ORCHESTRATOR),
            usage={"calls": 1},
        )
    assert wrote is False
    assert _row(turn_id) == before  # not the intent, nor the usage, nor anything else
    assert _spans(turn_id) == spans_before  # and no span for a write that did not happen
