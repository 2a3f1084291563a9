"""chordline's Redis transport hands a message to the consumer before it records it as
unacknowledged, records it as kombu does right after, and lets no acknowledgement overtake
that record (real Redis, real kombu consumers)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue
from kombu.transport.redis import Transport as KombuTransport

from shared.broker_transport import Transport
from shared.config import get_settings

pytestmark = pytest.mark.integration

UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


@pytest.fixture
def queue(services: None) -> Iterator[Queue]:
    name = f"test-transport-{uuid.uuid4()}"
    yield Queue(name, routing_key=name)
    redis.Redis.from_url(get_settings().redis_url or "").delete(name)


def _recorded(client: redis.Redis, tag: str) -> tuple[bool, bool]:
    return bool(client.hexists(UNACKED, tag)), client.zscore(UNACKED_INDEX, tag) is not None


@contextmanager
def _consume_one(transport: Any, queue: Queue, on_message: Callable[[Any], None]) -> Iterator[Any]:
    """Publish one message to ``queue`` and consume it with ``transport``: the message, while
    the connection is open (closing it restores what is still unacknowledged)."""
    received: list[Any] = []

    def handle(body: Any, message: Any) -> None:
        received.append(message)
        on_message(message)

    with Connection(get_settings().redis_url or "", transport=transport) as conn:
        Producer(conn.default_channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        channel = conn.channel()
        with Consumer(channel, [queue], callbacks=[handle], accept=["json"]):
            conn.drain_events(timeout=5)
            assert received, "no message was delivered"
            yield received[0]


def test_the_consumer_has_the_message_before_it_is_recorded_then_the_record_is_kombus(
    queue: Queue,
) -> None:
    client = redis.Redis.from_url(get_settings().redis_url or "")
    seen: dict[str, tuple[bool, bool]] = {}

    def look(message: Any) -> None:
        seen["at delivery"] = _recorded(client, message.delivery_tag)

    with _consume_one(Transport, queue, look) as message:
        tag = message.delivery_tag
        assert seen["at delivery"] == (False, False)
        assert _recorded(client, tag) == (True, True)
        # The record is kombu's: its own restore puts the message back on the queue.
        message.channel.qos.restore_by_tag(tag)
        assert client.llen(queue.name) == 1
        assert _recorded(client, tag) == (False, False)


def test_kombus_own_transport_records_before_delivery(queue: Queue) -> None:
    """The control: the same check fails with kombu's transport, so it can fail."""
    client = redis.Redis.from_url(get_settings().redis_url or "")
    seen: dict[str, tuple[bool, bool]] = {}

    def look(message: Any) -> None:
        seen["at delivery"] = _recorded(client, message.delivery_tag)
        message.ack()

    with _consume_one(KombuTransport, queue, look):
        pass
    assert seen["at delivery"] == (True, True)


def test_an_ack_during_delivery_waits_for_the_record_and_leaves_nothing_behind(
    queue: Queue,
) -> None:
    client = redis.Redis.from_url(get_settings().redis_url or "")
    acker: dict[str, threading.Thread] = {}

    def ack_from_another_thread(message: Any) -> None:
        thread = threading.Thread(target=message.ack)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), "the ack did not wait for the record"
        acker["thread"] = thread

    with _consume_one(Transport, queue, ack_from_another_thread) as message:
        acker["thread"].join(5)
        assert not acker["thread"].is_alive()
        assert _recorded(client, message.delivery_tag) == (False, False)
    assert client.llen(queue.name) == 0


def test_a_message_acked_after_delivery_leaves_no_record(queue: Queue) -> None:
    client = redis.Redis.from_url(get_settings().redis_url or "")
    with _consume_one(Transport, queue, lambda _: None) as message:
        message.ack()
        assert _recorded(client, message.delivery_tag) == (False, False)
    assert client.llen(queue.name) == 0
