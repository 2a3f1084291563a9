"""A stage that writes outside its own fields fails loudly, and writes nothing; a writer
moves a turn only along its own transitions (shared/turn_state.py), and the database
refuses a status outside them."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from shared.client import enqueue_turn, get_turn, wait_for_turn
from shared.db.direct import direct_connection
from shared.db.models import Turn, TurnSpan
from shared.db.session import session_scope
from shared.db.spans import SpanRecord
from shared.db.turns import load_turn, write_stage_output
from shared.errors import IllegalTransition, OwnershipViolation
from shared.schemas import Stage
from shared.turn.recovery import end_turn_failed
from shared.turn_state import Actor
from tests.conftest import accept_unpublished_turn

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


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("UPDATE turns SET status = 'paused' WHERE id = %(id)s", "ck_turns_status"),
        ("UPDATE turns SET kb_information_level = 'HIGH' WHERE id = %(id)s", "ck_turns_kb"),
        ("UPDATE turns SET next_agent = 'sales' WHERE id = %(id)s", "ck_turns_next_agent"),
        (
            "UPDATE conversations SET qualification_status = 'hot' "
            "WHERE id = (SELECT conversation_id FROM turns WHERE id = %(id)s)",
            "ck_conversations_qualification_status",
        ),
    ],
)
def test_the_database_refuses_a_status_or_value_outside_the_declared_ones(
    services: None, tenant: str, statement: str, constraint: str
) -> None:
    turn_id = accept_unpublished_turn(tenant)
    try:
        with (
            direct_connection() as conn,
            pytest.raises(psycopg.errors.CheckViolation, match=constraint),
        ):
            conn.execute(statement, {"id": uuid.UUID(turn_id)})
        assert get_turn(turn_id).status == "queued"
    finally:
        end_turn_failed(turn_id, "test over", actor=Actor.SWEEPER)


def test_a_writer_moves_a_turn_only_along_its_own_transitions(services: None, tenant: str) -> None:
    first = accept_unpublished_turn(tenant, conversation="c-transitions")
    waiting = accept_unpublished_turn(tenant, conversation="c-transitions")
    assert (get_turn(first).status, get_turn(waiting).status) == ("queued", "waiting")
    # the merge routes only a queued turn: one waiting behind another is left as it is
    with direct_connection() as conn:
        routed = write_stage_output(
            conn,
            stage=Stage.MERGE,
            turn_id=waiting,
            values={"next_agent": "support", "routed_at": time.time(), "status": "routed"},
            span=_span(waiting, Stage.MERGE),
        )
    assert routed is False and get_turn(waiting).status == "waiting"
    # admission fails only a held turn; the sweeper fails a queued one, and the hand-over
    # queues the turn that waited behind it
    assert end_turn_failed(first, "held too long?", actor=Actor.ADMISSION).ended is False
    assert get_turn(first).status == "queued"
    assert end_turn_failed(first, "out of attempts", actor=Actor.SWEEPER).ended is True
    assert (get_turn(first).status, get_turn(waiting).status) == ("failed", "queued")
    end_turn_failed(waiting, "test over", actor=Actor.SWEEPER)
    # nothing leaves an end: the agent's write to a failed turn changes nothing
    with direct_connection() as conn:
        completed = write_stage_output(
            conn,
            stage=Stage.AGENT,
            turn_id=first,
            values={"agent_response": "late", "completed_at": time.time(), "status": "completed"},
            span=_span(first, Stage.AGENT),
        )
    assert completed is False and get_turn(first).status == "failed"


def test_a_stage_may_not_set_a_status_it_does_not_reach(services: None, tenant: str) -> None:
    turn_id = accept_unpublished_turn(tenant)
    try:
        with (
            direct_connection() as conn,
            pytest.raises(IllegalTransition, match="'merge' may not move a turn to completed"),
        ):
            write_stage_output(
                conn,
                stage=Stage.MERGE,
                turn_id=turn_id,
                values={"routed_at": time.time(), "status": "completed"},
                span=_span(turn_id, Stage.MERGE),
            )
        assert get_turn(turn_id).status == "queued"
    finally:
        end_turn_failed(turn_id, "test over", actor=Actor.SWEEPER)
