"""The sweeper and the outbox relay on real Postgres and Redis: several of them at once,
and a turn that runs out of attempts."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared import dispatch
from shared.config import get_settings
from shared.db.models import Turn, TurnOutbox
from shared.db.session import session_scope
from shared.turn.agents import FALLBACK_REPLY
from shared.turn.recovery import SweepReport, relay_outbox, sweep_stuck_turns
from tests.conftest import accept_unpublished_turn

pytestmark = pytest.mark.integration


def _stuck_turns(tenant: str, count: int, *, conversation: str | None = None) -> list[str]:
    """Accepted turns whose stage deadline has already passed and that nobody published."""
    ids = []
    for _ in range(count):
        turn_id = accept_unpublished_turn(
            tenant,
            message="How much does the Growth plan cost?",
            conversation=conversation,
            stage_deadline_s=-1.0,
        )
        ids.append(turn_id)
    return ids


def _rows(ids: list[str]) -> dict[str, Turn]:
    with session_scope() as session:
        turns = session.scalars(select(Turn).where(Turn.id.in_([uuid.UUID(i) for i in ids])))
        return {str(t.id): t for t in turns}


def _in_parallel(count: int, work: object) -> list[object]:
    """``work()`` in ``count`` threads at once; every one must return, none may raise."""
    assert callable(work)
    results: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run() -> None:
        try:
            start.wait(timeout=30)
            results.append(work())
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [thread.name for thread in threads if thread.is_alive()]
    assert not alive, f"still running after 60 s: {alive}"
    if errors:
        raise AssertionError(f"{len(errors)} of {count} threads raised: {errors!r}") from errors[0]
    assert len(results) == count, f"{len(results)} of {count} threads returned a result"
    return results


def test_sweepers_on_several_machines_re_drive_each_turn_once(services: None, tenant: str) -> None:
    ids = _stuck_turns(tenant, 12)
    reports = _in_parallel(4, sweep_stuck_turns)
    redriven = [t for r in reports if isinstance(r, SweepReport) for t in r.redriven]
    mine = [t for t in redriven if t in ids]
    assert sorted(mine) == sorted(ids)  # every stuck turn once, none twice
    assert all(turn.attempts == 1 for turn in _rows(ids).values())


def test_a_turn_out_of_attempts_fails_with_a_reason_and_frees_its_conversation(
    services: None, tenant: str
) -> None:
    first, waiting = _stuck_turns(tenant, 2, conversation="stuck-conversation")
    with session_scope() as session:
        session.execute(
            update(Turn)
            .where(Turn.id == uuid.UUID(first))
            .values(attempts=get_settings().turn.max_attempts - 1)
        )
    report = sweep_stuck_turns()
    assert first in report.failed
    rows = _rows([first, waiting])
    assert rows[first].status == "failed"
    assert "stuck in queued after" in (rows[first].failure_reason or "")
    assert rows[first].agent_response == FALLBACK_REPLY and rows[first].agent_fallback
    # the next turn of the conversation may run now, and its dispatch intent is durable
    assert rows[waiting].status == "queued"
    with session_scope() as session:
        assert session.scalar(
            select(TurnOutbox.turn_id).where(TurnOutbox.turn_id == uuid.UUID(waiting))
        )


def test_relays_on_several_machines_leave_no_intent_behind(services: None, tenant: str) -> None:
    ids = _stuck_turns(tenant, 10)
    with session_scope() as session:  # old enough for the relay to take them
        session.execute(
            update(TurnOutbox)
            .where(TurnOutbox.turn_id.in_([uuid.UUID(i) for i in ids]))
            .values(created_at=TurnOutbox.created_at - timedelta(seconds=60))
        )
    sent = _in_parallel(3, lambda: relay_outbox(older_than_s=1.0))
    with session_scope() as session:
        pending = session.scalars(
            select(TurnOutbox.turn_id).where(
                TurnOutbox.turn_id.in_([uuid.UUID(i) for i in ids]),
                TurnOutbox.dispatched_at.is_(None),
            )
        ).all()
    assert pending == []
    assert sum(int(n) for n in sent if isinstance(n, int)) >= len(ids)


def test_a_turn_whose_chord_callback_was_lost_is_routed_from_its_durable_headers(
    workers: None, tenant: str
) -> None:
    from shared.client import wait_for_turn
    from shared.db.spans import spans_of
    from shared.turn.orchestrator import run_orchestrator
    from shared.turn.researcher import run_researcher
    from shared.turn.stage import StageOrigin

    (turn_id,) = _stuck_turns(tenant, 1)
    run_orchestrator(turn_id, StageOrigin.here())  # both header outputs durable, no route:
    run_researcher(turn_id, StageOrigin.here())  # the chord's callback never came
    report = sweep_stuck_turns()
    assert turn_id in report.redriven
    view = wait_for_turn(turn_id, timeout=30)
    assert view.status == "completed"
    with session_scope() as session:
        stages = sorted(s.stage for s in spans_of(session, turn_id))
    assert stages == ["agent", "merge", "orchestrator", "researcher"]  # each written once


def test_sweepers_racing_over_exhausted_turns_count_each_failure_once(
    services: None, tenant: str
) -> None:
    ids = _stuck_turns(tenant, 6)
    with session_scope() as session:
        session.execute(
            update(Turn)
            .where(Turn.id.in_([uuid.UUID(i) for i in ids]))
            .values(attempts=get_settings().turn.max_attempts)
        )
    reports = _in_parallel(3, sweep_stuck_turns)
    failed = [t for r in reports if isinstance(r, SweepReport) for t in r.failed if t in ids]
    assert sorted(failed) == sorted(ids)  # each one reported by the sweeper that ended it
    assert all(turn.status == "failed" for turn in _rows(ids).values())


def test_a_row_the_relay_cannot_publish_does_not_hold_back_the_rest(
    services: None, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _stuck_turns(tenant, 4)
    with session_scope() as session:  # old enough for the relay to take them, oldest first
        for age, turn_id in enumerate(ids):
            session.execute(
                update(TurnOutbox)
                .where(TurnOutbox.turn_id == uuid.UUID(turn_id))
                .values(created_at=TurnOutbox.created_at - timedelta(seconds=60 - age))
            )
    broken = ids[0]
    real_publish = dispatch.publish_turn

    def publish_all_but_one(turn_id: str, topology: str) -> None:
        if turn_id == broken:
            raise ValueError("this row cannot be published")
        real_publish(turn_id, topology)

    monkeypatch.setattr(dispatch, "publish_turn", publish_all_but_one)
    assert relay_outbox(older_than_s=1.0) >= 3
    with session_scope() as session:
        pending = session.scalars(
            select(TurnOutbox.turn_id).where(
                TurnOutbox.turn_id.in_([uuid.UUID(i) for i in ids]),
                TurnOutbox.dispatched_at.is_(None),
            )
        ).all()
    assert [str(p) for p in pending] == [broken]  # still there for the next relay


def test_a_next_turn_the_broker_refuses_is_left_to_the_relay_and_the_agent_succeeds(
    services: None, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import BrokerUnavailable
    from shared.schemas import Agent
    from shared.turn import flow
    from shared.turn.merge import run_merge
    from shared.turn.orchestrator import run_orchestrator
    from shared.turn.researcher import run_researcher
    from shared.turn.stage import StageOrigin

    first, waiting = _stuck_turns(tenant, 2, conversation=f"c-{uuid.uuid4().hex[:8]}")
    origin = StageOrigin.here()
    run_orchestrator(first, origin)
    run_researcher(first, origin)
    routed = run_merge(first, origin)
    assert routed is not None

    def broker_down(turn_id: str, topology: str) -> None:
        raise BrokerUnavailable(f"could not publish the workflow of turn {turn_id}")

    monkeypatch.setattr(dispatch, "publish_turn", broker_down)
    result = flow.answer(first, agent=Agent(routed[0].next_agent), retrieve=False, origin=origin)
    assert result.ended is True and result.next_turn == waiting  # no retry of this task
    with session_scope() as session:
        intent = session.execute(
            select(TurnOutbox.turn_id, TurnOutbox.dispatched_at).where(
                TurnOutbox.turn_id == uuid.UUID(waiting)
            )
        ).one()  # written with the first turn's reply
    assert _rows([waiting])[waiting].status == "queued"
    assert intent.dispatched_at is None  # left for the relay
