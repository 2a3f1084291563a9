"""Double-texting with ``in_flight_policy = interrupt``, on real workers: the turn in flight
is cancelled exactly once (or, when its agent commits first, completes), its stream ends
with a cancel marker, its agent stops, and the new turn carries both messages."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from shared.client import enqueue_turn, get_turn, wait_for_turn
from shared.db.models import TurnSpan
from shared.db.session import session_scope
from shared.streaming import StreamEvent, read_events
from shared.turn.recovery import sweep_stuck_turns
from tests.conftest import ARTIFACTS, new_tenant

if TYPE_CHECKING:
    import psycopg

pytestmark = pytest.mark.integration

FIRST = "Does Halyard have a REST API?"
SECOND = "And webhooks for stock changes?"


def _events(turn_id: str) -> list[StreamEvent]:
    return read_events(turn_id, after="0", block_ms=1)


def _wait_for_first_token(turn_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.kind == "token" for e in _events(turn_id)):
            return
        time.sleep(0.002)
    raise AssertionError(f"turn {turn_id} never streamed a token")


def _agent_spans(turn_id: str) -> int:
    with session_scope() as session:
        return len(
            session.scalars(
                select(TurnSpan).where(
                    TurnSpan.turn_id == uuid.UUID(turn_id), TurnSpan.stage == "agent"
                )
            ).all()
        )


def _agents_log_says_cancelled(turn_id: str, timeout: float = 10.0) -> bool:
    log = ARTIFACTS / "worker-logs" / "agents.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if turn_id in line and '"agent_cancelled"' in line:
                return True
        time.sleep(0.1)
    return False


def test_a_second_message_cancels_the_reply_in_flight_and_carries_both(workers: None) -> None:
    tenant = new_tenant({"in_flight_policy": "interrupt"})
    first = enqueue_turn(tenant, "c1", FIRST)
    _wait_for_first_token(first)  # its agent is streaming the reply
    second = enqueue_turn(tenant, "c1", SECOND)
    done = wait_for_turn(second, timeout=60)
    assert done.status == "completed"
    assert done.carried_message == FIRST and done.message == SECOND
    cancelled = get_turn(first)
    assert cancelled.status == "cancelled"
    assert cancelled.failure_reason == (
        f"interrupted by a later message of its conversation (turn {second})"
    )
    events = _events(first)
    kinds = [e.kind for e in events]
    marker = kinds.index("cancel")
    assert events[marker].reason == cancelled.failure_reason
    assert [e.status for e in events if e.kind == "end"] == ["cancelled"]
    # the agent stopped at its next batch of tokens and committed nothing
    assert _agents_log_says_cancelled(first)
    assert _agent_spans(first) == 0
    assert cancelled.agent_response is None
    # the sweeper leaves a cancelled turn alone
    sweep_stuck_turns()
    assert get_turn(first).status == "cancelled"


def test_interrupting_a_turn_that_has_not_started_carries_its_message(workers: None) -> None:
    tenant = new_tenant({"in_flight_policy": "interrupt"})
    first = enqueue_turn(tenant, "c1", FIRST)
    second = enqueue_turn(tenant, "c1", SECOND)  # milliseconds later: nothing has run yet
    third = enqueue_turn(tenant, "c1", "Which plan has SSO?")
    done = wait_for_turn(third, timeout=60)
    assert done.status == "completed"
    assert done.carried_message == f"{FIRST}\n\n{SECOND}"
    assert [get_turn(t).status for t in (first, second)] == ["cancelled", "cancelled"]


def test_a_cancel_racing_the_agents_commit_ends_the_turn_exactly_once(workers: None) -> None:
    """From cancelling a turn that has just begun streaming to cancelling one whose reply
    has already been committed: each first turn ends once, either completed (and the new
    turn carries nothing) or cancelled (and the new turn carries its message)."""
    tenant = new_tenant({"in_flight_policy": "interrupt"})
    rng = random.Random(7)
    delays = [0.0, 0.5] + [rng.uniform(0.0, 0.3) for _ in range(14)]
    outcomes: list[str] = []
    for i, delay in enumerate(delays):
        conversation = f"race-{i}"
        first = enqueue_turn(tenant, conversation, FIRST)
        _wait_for_first_token(first)
        time.sleep(delay)
        second = enqueue_turn(tenant, conversation, SECOND)
        assert wait_for_turn(second, timeout=60).status == "completed"
        ended = wait_for_turn(first, timeout=60)
        ends = [e.status for e in _events(first) if e.kind == "end"]
        carried = get_turn(second).carried_message
        if ended.status == "completed":
            assert ended.agent_response and ended.failure_reason is None
            assert _agent_spans(first) == 1
            assert carried is None
            assert "cancelled" not in ends
        else:
            assert ended.status == "cancelled", ended
            assert ended.agent_response is None and _agent_spans(first) == 0
            assert carried == FIRST
            assert "completed" not in ends
        assert len(ends) >= 1
        outcomes.append(ended.status)
    print(json.dumps({"outcomes": outcomes}))
    # both ends of the race were reached: a cancel at once, and one after the commit
    assert outcomes[0] == "cancelled" and outcomes[1] == "completed"


def _lock_waiters(conn: psycopg.Connection[Any], fragment: str) -> int:
    """Backends waiting on a row lock while running a statement containing ``fragment``."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %(q)s",
        {"q": f"%{fragment}%"},
    ).fetchone()
    assert row is not None
    return int(row[0])


def _until(condition: object, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_a_cancel_waiting_on_the_agents_commit_finds_the_turn_completed(workers: None) -> None:
    """The agent's end holds the turn's row when the interrupt arrives: the interrupt waits
    for it, then finds the turn completed and cancels nothing."""
    import threading

    import psycopg

    from shared.config import get_settings
    from shared.db.direct import libpq_url

    tenant = new_tenant({"in_flight_policy": "interrupt"})
    first = enqueue_turn(tenant, "c1", FIRST)
    url = libpq_url(get_settings().database_url or "")
    with (
        psycopg.connect(url, autocommit=False) as holder,
        psycopg.connect(url, autocommit=True) as watcher,
    ):
        # hold the conversation: the agent's end writes the reply, then waits for it
        holder.execute(
            "SELECT id FROM conversations WHERE tenant_id = %(t)s AND external_id = 'c1' "
            "FOR UPDATE",
            {"t": tenant},
        )
        _until(lambda: _lock_waiters(watcher, "UPDATE turns SET agent_fallback") >= 1)
        second: list[str] = []
        sender = threading.Thread(
            target=lambda: second.append(enqueue_turn(tenant, "c1", SECOND)), daemon=True
        )
        sender.start()
        _until(lambda: _lock_waiters(watcher, "SET status = 'cancelled'") >= 1)
        holder.rollback()  # the agent commits first; the interrupt then sees its end
        sender.join(timeout=30)
    assert second
    assert wait_for_turn(first, timeout=30).status == "completed"
    done = wait_for_turn(second[0], timeout=60)
    assert done.status == "completed" and done.carried_message is None
    assert "cancel" not in [e.kind for e in _events(first)]


def test_a_turn_cancelled_before_its_stages_ran_calls_no_model(workers: None) -> None:
    from shared.dispatch import publish_turn
    from tests.conftest import accept_unpublished_turn

    tenant = new_tenant({"in_flight_policy": "interrupt"})
    first = accept_unpublished_turn(tenant, message=FIRST, conversation="c1")
    second = enqueue_turn(tenant, "c1", SECOND)
    publish_turn(first, "parallel")  # its workflow arrives after all (a late delivery)
    assert wait_for_turn(second, timeout=60).status == "completed"
    time.sleep(1.0)  # its header tasks, published before the second turn ran, are done
    cancelled = get_turn(first)
    assert cancelled.status == "cancelled"
    assert cancelled.usage == {}  # no stage called a model
    assert cancelled.proposed_agent is None and cancelled.kb_information_level is None
    assert _agent_spans(first) == 0
