"""What a service meets when a call of the client cannot succeed: Postgres unreachable, an
idempotency key reused for another message, a turn id nobody issued. Real Postgres and
Redis; no workers needed (a turn that nobody runs is exactly what some of these want)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from shared.client import SAFE_RETRY, enqueue_turn, get_turn, stream_turn
from shared.config import reset_settings
from shared.contract import TURN_QUEUES
from shared.db.direct import dispose_direct_pool
from shared.db.models import Conversation, Turn, TurnOutbox
from shared.db.session import dispose_engine, session_scope
from shared.db.tenants import recent_tenant_settings
from shared.dispatch import flush_dispatch
from shared.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    PermanentError,
    TransientError,
    TurnNotFound,
)
from shared.redis_conn import get_redis
from shared.streaming import ReplyStream, publish_end
from shared.turn.recovery import end_turn_failed
from shared.turn_state import Actor
from tests.conftest import accept_unpublished_turn, new_tenant

pytestmark = pytest.mark.integration


@pytest.fixture
def ended_after(services: None) -> Iterator[list[str]]:
    """Turns a test leaves open are ended failed after it: no worker may be running to end
    them, and an open turn would count as live load for whatever runs next."""
    turns: list[str] = []
    yield turns
    for turn_id in turns:
        end_turn_failed(turn_id, "test over", actor=Actor.SWEEPER)


def _queued_messages() -> set[str]:
    """Every message waiting on the turn queues (Celery's Redis lists), as sent."""
    redis = get_redis()
    return {str(message) for queue in TURN_QUEUES for message in redis.lrange(queue, 0, -1)}


def _written(tenant: str) -> tuple[int, int, int, int]:
    """The tenant's turns, outbox rows, conversations and conversation counters."""
    with session_scope() as session:
        tenant_turns = select(Turn.id).where(Turn.tenant_id == tenant)
        return (
            session.scalar(select(func.count()).select_from(tenant_turns.subquery())) or 0,
            session.scalar(
                select(func.count())
                .select_from(TurnOutbox)
                .where(TurnOutbox.turn_id.in_(tenant_turns))
            )
            or 0,
            session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(Conversation.tenant_id == tenant)
            )
            or 0,
            session.scalar(
                select(func.coalesce(func.sum(Conversation.next_seq), 0)).where(
                    Conversation.tenant_id == tenant
                )
            )
            or 0,
        )


# --------------------------------------------------------------------------- Postgres down


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _forget_connections() -> None:
    reset_settings()
    dispose_engine()
    dispose_direct_pool()


@pytest.fixture
def postgres_down(services: None) -> Iterator[Callable[[], AbstractContextManager[None]]]:
    """Within the context it makes, this process's DATABASE_URL points at a port nobody
    listens on, as if Postgres were down; the real URL is back after it (and the test)."""
    real_url = os.environ["DATABASE_URL"]

    def restore() -> None:
        os.environ["DATABASE_URL"] = real_url
        _forget_connections()

    @contextmanager
    def down() -> Iterator[None]:
        os.environ["DATABASE_URL"] = (
            make_url(real_url)
            .set(host="127.0.0.1", port=_closed_port())
            .render_as_string(hide_password=False)
        )
        _forget_connections()
        try:
            yield
        finally:
            restore()

    try:
        yield down
    finally:
        restore()


@pytest.mark.parametrize("tenant_settings_cached", [True, False])
def test_enqueue_turn_with_postgres_down_raises_a_transient_error_and_enqueues_nothing(
    postgres_down: Callable[[], AbstractContextManager[None]],
    ended_after: list[str],
    tenant_settings_cached: bool,
) -> None:
    tenant = new_tenant(with_demo_kb=False)
    if tenant_settings_cached:  # the call's first query is then the acceptance itself
        recent_tenant_settings.get(tenant)
    else:
        recent_tenant_settings.forget(tenant)
    assert flush_dispatch()
    before = _queued_messages()
    with postgres_down(), pytest.raises(DatabaseUnavailable) as caught:
        enqueue_turn(tenant, "c1", "Does it have a REST API?", idempotency_key="req-down")
    assert flush_dispatch()
    message = str(caught.value)
    assert isinstance(caught.value, TransientError)
    assert message.startswith("Postgres (DATABASE_URL) could not be reached: ")
    assert "Connection refused" in message
    assert message.endswith("this is transient: " + SAFE_RETRY)
    assert "\n" not in message
    # nothing published (a running worker may have consumed others meanwhile) or written
    assert _queued_messages() <= before
    assert _written(tenant) == (0, 0, 0, 0)
    # and with Postgres back, the retry with the same key is accepted, once
    ended_after.append(
        enqueue_turn(tenant, "c1", "Does it have a REST API?", idempotency_key="req-down")
    )
    assert _written(tenant)[:3] == (1, 1, 1)


def test_reading_a_turn_with_postgres_down_raises_a_transient_error(
    postgres_down: Callable[[], AbstractContextManager[None]],
) -> None:
    turn_id = str(uuid.uuid4())
    with postgres_down():
        with pytest.raises(
            DatabaseUnavailable, match=r"could not be reached: .*; this is transient: retry later$"
        ):
            get_turn(turn_id)
        with pytest.raises(
            DatabaseUnavailable, match=r"could not be reached: .*; this is transient: retry later$"
        ):
            stream_turn(turn_id)


# --------------------------------------------------------------------------- idempotency


@pytest.mark.parametrize("in_flight_policy", ["queue", "reject"])
def test_an_idempotency_key_reused_for_another_message_or_conversation_is_refused(
    ended_after: list[str], in_flight_policy: str
) -> None:
    tenant = new_tenant({"in_flight_policy": in_flight_policy}, with_demo_kb=False)
    first = enqueue_turn(tenant, "c1", "We run three warehouses.", idempotency_key="req-1")
    ended_after.append(first)
    assert flush_dispatch()
    written, queued = _written(tenant), _queued_messages()
    cases = [
        ("c1", "How much is the Growth plan?", ["message"]),
        ("c2", "We run three warehouses.", ["conversation"]),
        ("c2", "How much is the Growth plan?", ["message", "conversation"]),
    ]
    for conversation, message, differs in cases:
        with pytest.raises(IdempotencyConflict) as caught:
            enqueue_turn(tenant, conversation, message, idempotency_key="req-1")
        refused = caught.value
        assert isinstance(refused, PermanentError)
        assert (refused.field, refused.key, refused.turn_id) == ("idempotency_key", "req-1", first)
        assert refused.differs == differs
        assert str(refused) == (
            f"idempotency_key: 'req-1' already belongs to turn {first}, which has a different "
            f"{' and '.join(differs)}; nothing was written or enqueued"
        )
    assert flush_dispatch()
    assert _written(tenant) == written
    assert _queued_messages() <= queued  # nothing published
    # the same key with the same conversation and message is still the same turn
    assert enqueue_turn(tenant, "c1", "We run three warehouses.", idempotency_key="req-1") == first
    assert _written(tenant) == written


def test_a_busy_conversation_still_refuses_a_new_key_under_the_reject_policy(
    ended_after: list[str],
) -> None:
    tenant = new_tenant({"in_flight_policy": "reject"}, with_demo_kb=False)
    ended_after.append(enqueue_turn(tenant, "c1", "We run three warehouses.", idempotency_key="k1"))
    with pytest.raises(InvalidInput, match="already has a turn in flight") as caught:
        enqueue_turn(tenant, "c1", "How much is the Growth plan?", idempotency_key="k2")
    assert not isinstance(caught.value, IdempotencyConflict)


# --------------------------------------------------------------------------- streams


def test_streaming_an_unknown_turn_raises_not_found_at_once(services: None) -> None:
    turn_id = str(uuid.uuid4())
    started = time.monotonic()
    with pytest.raises(TurnNotFound) as caught:
        stream_turn(turn_id, timeout=30)
    assert time.monotonic() - started < 5  # not the 30 s timeout
    assert str(caught.value) == f"turn {turn_id} does not exist"


def test_streaming_a_known_turn_waits_for_its_stream_to_start(
    ended_after: list[str], tenant: str
) -> None:
    # accepted and never published: its stream starts only when this test writes it
    turn_id = accept_unpublished_turn(tenant)
    ended_after.append(turn_id)

    def agent_later() -> None:
        time.sleep(0.5)
        run = ReplyStream(turn_id)
        run.token("Yes, through its REST API.")
        run.close()
        publish_end(turn_id, "completed")

    writer = threading.Thread(target=agent_later)
    started = time.monotonic()
    events = stream_turn(turn_id, timeout=30)
    writer.start()
    seen = [(event.kind, event.text) for event in events]
    writer.join()
    assert time.monotonic() - started >= 0.5
    assert seen == [("token", "Yes, through its REST API."), ("end", "")]
