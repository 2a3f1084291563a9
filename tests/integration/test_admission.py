"""Admission per tenant on real Postgres, Redis and workers: the rate and the in-flight cap,
refused or held, and held turns that survive a crash half way through their release."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from shared.admission import (
    ACTIVE_KEY,
    FLEET_KEY,
    admit,
    end_in_redis,
    held_key,
    in_flight_key,
    release,
    turn_lifetime_s,
)
from shared.client import enqueue_turn, wait_for_turn
from shared.config import reset_settings
from shared.db.direct import direct_connection
from shared.db.models import Turn, TurnOutbox
from shared.db.session import session_scope
from shared.db.tenants import recent_tenant_settings
from shared.db.turns import accept_turn
from shared.errors import AdmissionRefused
from shared.redis_conn import get_redis
from shared.schemas import Admission
from shared.streaming import read_events
from shared.turn.recovery import release_held_turns
from tests.conftest import new_tenant

pytestmark = pytest.mark.integration

QUESTION = "How much does the Growth plan cost?"


def _admission(**values: object) -> dict[str, object]:
    return {"admission": values}


def _turn_count(tenant: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(Turn.tenant_id == tenant)) or 0)


def _turns(ids: list[str]) -> dict[str, Turn]:
    with session_scope() as session:
        rows = session.scalars(select(Turn).where(Turn.id.in_([uuid.UUID(i) for i in ids])))
        return {str(t.id): t for t in rows}


def test_over_the_rate_a_refusing_tenant_gets_one_line_naming_the_limit_and_when_to_retry(
    services: None,
) -> None:
    tenant = new_tenant(
        _admission(turns_per_s=0.5, burst=2, over_limit="refuse"), with_demo_kb=False
    )
    first = enqueue_turn(tenant, "c1", QUESTION, idempotency_key="k1")
    enqueue_turn(tenant, "c2", QUESTION)
    with pytest.raises(AdmissionRefused) as refused:
        enqueue_turn(tenant, "c3", QUESTION)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"admission.turns_per_s: tenant {tenant} is sending faster than")
    assert "nothing was written or enqueued; retry after" in message
    # the bucket refills at 0.5 turns/s: a whole token is about two seconds away
    assert 1.0 < refused.value.retry_after_s <= 2.0
    assert _turn_count(tenant) == 2
    # a retry of a turn accepted before is no new turn: it gets its turn, not a refusal
    assert enqueue_turn(tenant, "c1", QUESTION, idempotency_key="k1") == first
    time.sleep(refused.value.retry_after_s + 0.1)
    enqueue_turn(tenant, "c3", QUESTION)
    assert _turn_count(tenant) == 3


def test_the_in_flight_cap_refuses_while_full_and_frees_a_slot_when_a_turn_ends(
    workers: None,
) -> None:
    tenant = new_tenant(_admission(max_in_flight=2, over_limit="refuse"))
    # a turn takes at least its simulated orchestrator and agent time (over 100 ms here):
    # both are still in flight when the third arrives a few milliseconds later
    running = [enqueue_turn(tenant, f"c{i}", QUESTION) for i in range(2)]
    with pytest.raises(AdmissionRefused) as refused:
        enqueue_turn(tenant, "c3", QUESTION)
    assert str(refused.value).startswith(
        f"admission.max_in_flight: tenant {tenant} has 2 turns in flight, its limit;"
    )
    assert refused.value.retry_after_s == pytest.approx(1.0)
    for turn_id in running:
        assert wait_for_turn(turn_id, timeout=60).status == "completed"
    # each turn's end gave its slot back (a slot left behind would last a minute)
    again = [enqueue_turn(tenant, f"d{i}", QUESTION) for i in range(2)]
    assert [wait_for_turn(t, timeout=60).status for t in again] == ["completed"] * 2


def test_held_turns_wait_in_order_and_never_exceed_the_cap(workers: None) -> None:
    tenant = new_tenant(_admission(max_in_flight=2, over_limit="hold"))
    ids = [enqueue_turn(tenant, f"c{i}", QUESTION) for i in range(7)]
    at_acceptance = _turns(ids)
    held = [t for t in ids if at_acceptance[t].status == "held"]
    assert len(held) >= 3  # two fit; the others came within milliseconds
    views = [wait_for_turn(t, timeout=90) for t in ids]
    assert [v.status for v in views] == ["completed"] * 7
    turns = _turns(ids)
    # in flight from admission (held turns: from their release) to the end of the turn
    spans = [
        (max(turns[t].accepted_at, turns[t].released_at or 0.0), turns[t].completed_at or 0.0)
        for t in ids
    ]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    # let go in the order they were accepted (two turns ending at once let two go, whose
    # promotions in Postgres may commit a fraction of a millisecond the other way round)
    assert all(turns[t].released_at is not None for t in held)
    released = [turns[t].released_at or 0.0 for t in held]
    assert all(a <= b + 0.02 for i, a in enumerate(released) for b in released[i + 1 :])


def _accept(tenant: str, *, held: bool, accepted_at: float | None = None) -> str:
    """A turn accepted as enqueue_turn accepts it, unpublished."""
    turn_id = str(uuid.uuid4())
    with direct_connection() as conn:
        accept_turn(
            conn,
            turn_id=turn_id,
            tenant_id=tenant,
            conversation=f"c-{uuid.uuid4().hex[:8]}",
            message=QUESTION,
            topology="parallel",
            idempotency_key=None,
            accepted_at=accepted_at or time.time(),
            stage_deadline_s=60.0,
            reject_when_busy=False,
            held=held,
        )
    return turn_id


def test_a_held_turn_survives_a_crash_between_its_release_in_redis_and_in_postgres(
    services: None,
) -> None:
    tenant = new_tenant(_admission(max_in_flight=1, over_limit="hold"), with_demo_kb=False)
    policy = recent_tenant_settings.get(tenant).admission
    running = str(uuid.uuid4())
    assert not admit(tenant, running, policy, order=time.time()).held
    _accept_as(tenant, running, held=False)
    waiting = str(uuid.uuid4())
    assert admit(tenant, waiting, policy, order=time.time()).held
    _accept_as(tenant, waiting, held=True)
    # the running turn ends; its release admits the held one in Redis, and the process
    # dies before it promotes the turn in Postgres
    assert release(tenant, policy, ended_turn=running).promoted == [waiting]
    assert _turns([waiting])[waiting].status == "held"
    report = release_held_turns()
    assert report.released >= 1
    promoted = _turns([waiting])[waiting]
    assert promoted.status != "held" and promoted.released_at is not None
    with session_scope() as session:
        assert session.get(TurnOutbox, uuid.UUID(waiting)) is not None


def _accept_as(tenant: str, turn_id: str, *, held: bool) -> None:
    with direct_connection() as conn:
        accept_turn(
            conn,
            turn_id=turn_id,
            tenant_id=tenant,
            conversation=f"c-{uuid.uuid4().hex[:8]}",
            message=QUESTION,
            topology="parallel",
            idempotency_key=None,
            accepted_at=time.time(),
            stage_deadline_s=60.0,
            reject_when_busy=False,
            held=held,
        )


def test_held_turns_redis_lost_are_held_again_and_stale_slots_are_dropped(
    services: None,
) -> None:
    tenant = new_tenant(_admission(max_in_flight=1, over_limit="hold"), with_demo_kb=False)
    ended = _accept(tenant, held=False)
    with direct_connection() as conn:  # it ended, but its release never reached Redis
        conn.execute(
            "UPDATE turns SET status = 'completed', completed_at = %(now)s WHERE id = %(id)s",
            {"now": time.time(), "id": uuid.UUID(ended)},
        )
    get_redis().zadd(in_flight_key(tenant), {ended: time.time() + 600})
    first, second = _accept(tenant, held=True), _accept(tenant, held=True)
    get_redis().delete(held_key(tenant))  # Redis restarted without them
    release_held_turns()
    turns = _turns([first, second])
    assert turns[first].status != "held"  # the stale slot went, the oldest held turn came in
    assert turns[second].status == "held"  # the cap is one: it waits
    assert get_redis().zscore(held_key(tenant), second) is not None


def test_a_turn_held_longer_than_hold_max_s_ends_failed_with_the_reason(services: None) -> None:
    tenant = new_tenant(
        _admission(max_in_flight=1, over_limit="hold", hold_max_s=5), with_demo_kb=False
    )
    get_redis().zadd(in_flight_key(tenant), {str(uuid.uuid4()): time.time() + 600})
    old = _accept(tenant, held=True, accepted_at=time.time() - 30)
    report = release_held_turns()
    assert old in report.expired
    turn = _turns([old])[old]
    assert turn.status == "failed"
    assert "admission.hold_max_s (5 s)" in (turn.failure_reason or "")
    assert turn.agent_response  # the fallback reply, as for any failed turn


def test_a_refusal_beyond_the_hold_limit_names_it(services: None) -> None:
    tenant = new_tenant(
        _admission(max_in_flight=1, over_limit="hold", hold_limit=2), with_demo_kb=False
    )
    policy = Admission(max_in_flight=1, over_limit="hold", hold_limit=2)
    assert not admit(tenant, str(uuid.uuid4()), policy, order=time.time()).held
    for _ in range(2):
        assert admit(tenant, str(uuid.uuid4()), policy, order=time.time()).held
    with pytest.raises(AdmissionRefused) as refused:
        enqueue_turn(tenant, "c1", QUESTION)
    assert str(refused.value).startswith(
        f"admission.hold_limit: tenant {tenant} already holds 2 turns over its limits"
    )
    assert refused.value.retry_after_s == pytest.approx(1.0)  # its turns take seconds
    assert _turn_count(tenant) == 0


@pytest.fixture
def fleet_of_four(services: None) -> Iterator[None]:
    """A fleet that takes four turns in flight before it admits tenants by fair share."""
    get_redis().delete(FLEET_KEY, ACTIVE_KEY)
    os.environ["CHORDLINE_TURN_FLEET_MAX_IN_FLIGHT"] = "4"
    reset_settings()
    try:
        yield
    finally:
        del os.environ["CHORDLINE_TURN_FLEET_MAX_IN_FLIGHT"]
        reset_settings()
        get_redis().delete(FLEET_KEY, ACTIVE_KEY)


def test_a_full_fleet_admits_each_tenant_up_to_its_fair_share(fleet_of_four: None) -> None:
    unlimited = Admission(max_in_flight=None, turns_per_s=None)
    noisy = new_tenant(
        {"admission": {"max_in_flight": None, "turns_per_s": None}}, with_demo_kb=False
    )
    quiet = new_tenant(
        {"admission": {"max_in_flight": None, "turns_per_s": None}}, with_demo_kb=False
    )

    def admit_one(tenant: str) -> str:
        turn_id = str(uuid.uuid4())
        admit(tenant, turn_id, unlimited, order=time.time())
        return turn_id

    flood = [admit_one(noisy) for _ in range(4)]  # the fleet is empty: all of it
    with pytest.raises(AdmissionRefused) as refused:
        enqueue_turn(noisy, "c1", QUESTION)
    assert str(refused.value).startswith(
        "CHORDLINE_TURN_FLEET_MAX_IN_FLIGHT: the fleet has 4 turns in flight, its limit, and "
        f"tenant {noisy} has 4, at or over its fair share (4); nothing was written or enqueued"
    )
    # the fleet is full, but the quiet tenant has none of it: its share is 4 / 2 tenants
    admit_one(quiet)
    admit_one(quiet)
    with pytest.raises(AdmissionRefused):
        admit_one(quiet)  # two: its share
    with pytest.raises(AdmissionRefused):
        admit_one(noisy)
    # a noisy turn ends: the noisy tenant still holds more than its share of a full fleet
    release(noisy, unlimited, ended_turn=flood[0])
    with pytest.raises(AdmissionRefused):
        admit_one(noisy)
    # the quiet tenant's turns end: it no longer counts, and the noisy one may take the room
    for turn_id in get_redis().zrange(in_flight_key(quiet), 0, -1):
        release(quiet, unlimited, ended_turn=str(turn_id))
    admit_one(noisy)
    assert _turn_count(noisy) == 0  # admitted ids only: the refusal wrote nothing


def test_turns_held_by_the_rate_go_as_the_bucket_refills_not_at_the_next_relay(
    workers: None,
) -> None:
    tenant = new_tenant(_admission(max_in_flight=None, turns_per_s=4, burst=1, over_limit="hold"))
    ids = [enqueue_turn(tenant, f"c{i}", QUESTION) for i in range(4)]
    views = [wait_for_turn(t, timeout=60) for t in ids]
    assert [v.status for v in views] == ["completed"] * 4
    turns = _turns(ids)
    released = sorted(t.released_at or 0.0 for t in turns.values() if t.released_at)
    assert len(released) == 3  # the first went at once, with the burst
    accepted = min(t.accepted_at for t in turns.values())
    # one every quarter of a second, not in steps of the relay's two seconds
    assert released[-1] - accepted < 1.5
    gaps = [b - a for a, b in itertools.pairwise(released)]
    assert all(gap > 0.15 for gap in gaps)


def test_a_turn_end_frees_its_slot_even_when_redis_has_forgotten_the_script(
    services: None,
) -> None:
    tenant = new_tenant(_admission(max_in_flight=1, over_limit="refuse"), with_demo_kb=False)
    policy = recent_tenant_settings.get(tenant).admission
    turn_id = str(uuid.uuid4())
    admit(tenant, turn_id, policy, order=time.time())
    get_redis().script_flush()  # as after a Redis restart
    released = end_in_redis(turn_id, "completed", tenant=tenant, policy=policy)
    assert released is not None and released.promoted == []
    assert get_redis().zscore(in_flight_key(tenant), turn_id) is None
    assert [e.status for e in read_events(turn_id, block_ms=1) if e.kind == "end"] == ["completed"]
    admit(tenant, str(uuid.uuid4()), policy, order=time.time())  # the slot is free again


def test_a_slot_taken_by_a_process_that_died_before_its_commit_is_dropped_after_a_grace(
    services: None,
) -> None:
    tenant = new_tenant(_admission(max_in_flight=2, over_limit="hold"), with_demo_kb=False)
    lifetime = turn_lifetime_s()
    ghost, fresh = str(uuid.uuid4()), str(uuid.uuid4())  # never written to Postgres
    get_redis().zadd(
        in_flight_key(tenant),
        {ghost: time.time() + lifetime - 30, fresh: time.time() + lifetime},
    )
    waiting = _accept(tenant, held=True)
    release_held_turns()
    assert get_redis().zscore(in_flight_key(tenant), ghost) is None  # admitted 30 s ago
    assert get_redis().zscore(in_flight_key(tenant), fresh) is not None  # may commit yet
    assert _turns([waiting])[waiting].status != "held"  # the ghost's slot went to it


def test_a_held_turn_over_its_fair_share_waits_until_the_fleet_has_room(
    fleet_of_four: None,
) -> None:
    hold = Admission(max_in_flight=None, turns_per_s=None, over_limit="hold")
    noisy = new_tenant(
        {"admission": {"max_in_flight": None, "turns_per_s": None}}, with_demo_kb=False
    )
    quiet = new_tenant(
        {"admission": {"max_in_flight": None, "turns_per_s": None}}, with_demo_kb=False
    )
    noisy_turns = [str(uuid.uuid4()) for _ in range(3)]
    quiet_turns = [str(uuid.uuid4()) for _ in range(2)]
    for turn_id in noisy_turns[:2]:
        assert not admit(noisy, turn_id, hold, order=time.time()).held
    for turn_id in quiet_turns:
        assert not admit(quiet, turn_id, hold, order=time.time()).held
    # the fleet is full (4) and the noisy tenant has its share (4 / 2): its next one waits
    assert admit(noisy, noisy_turns[2], hold, order=time.time()).held
    assert release(noisy, hold).promoted == []
    release(quiet, hold, ended_turn=quiet_turns[0])  # room in the fleet again
    assert release(noisy, hold).promoted == [noisy_turns[2]]
