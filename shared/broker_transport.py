"""kombu's Redis transport, as chordline's workers consume: a message reaches the worker
before it is recorded as unacknowledged, not after.

kombu's Redis transport (kombu.transport.redis, 5.7) pops a message with BRPOP and then,
in the consumer's thread, writes it to the ``unacked`` hash and its ``unacked_index`` (a
MULTI/EXEC round trip, with the message encoded again) before Celery sees it. Every task a
turn runs waits for that round trip before its thread can start. Here the message goes to
Celery first, and the same record is written right after, in the same thread: the task's
thread starts while the record is on its way.

Nothing else changes. The message is out of the queue from the moment BRPOP returns, in
both orders, and a worker that dies before the record is written loses it in both (Postgres
re-drives the turn; see the sweeper). The record, the keys, the visibility timeout and the
restore of unacknowledged messages are kombu's own, so workers of either kind can share
the queues. An acknowledgement waits for its message's record, so that it cannot arrive
before the record and leave an entry behind that would be delivered again.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS
from kombu.utils.json import dumps

# An acknowledgement waits at most this long for its message's record (a Redis round trip).
RECORD_WAIT_S = 5.0


class QoS(kombu_redis.QoS):
    """kombu's QoS, with the Redis record of a delivery as a step of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recording: dict[str, threading.Event] = {}

    def hold(self, message: Any, delivery_tag: str) -> None:
        """Count the delivery against the prefetch limit, before the worker sees it."""
        self._recording[delivery_tag] = threading.Event()
        VirtualQoS.append(self, message, delivery_tag)

    def record(self, message: Any, delivery_tag: str) -> None:
        """Write the delivery to the unacked hash and index, as kombu's ``append`` does."""
        try:
            self._write_unacked(message, delivery_tag)
        finally:
            recorded = self._recording.pop(delivery_tag, None)
            if recorded is not None:
                recorded.set()

    def ack(self, delivery_tag: str) -> None:
        self._wait_for_record(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._wait_for_record(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)

    def _wait_for_record(self, delivery_tag: str) -> None:
        recorded = self._recording.get(delivery_tag)
        if recorded is not None:
            recorded.wait(RECORD_WAIT_S)

    def _write_unacked(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                self.unacked_key, delivery_tag, raw
            ).execute()


class Channel(kombu_redis.Channel):
    QoS = QoS

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str | None, **kwargs: Any
    ) -> Any:
        consumed = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        callbacks = self.connection._callbacks
        if not no_ack and callbacks is not None:
            callbacks[queue] = self._deliver_then_record(callback)
        return consumed

    def _deliver_then_record(self, callback: Any) -> Any:
        def deliver(raw_message: Any) -> Any:
            message = self.Message(raw_message, channel=self)
            tag = cast(str, message.delivery_tag)  # kombu tags every message it delivers
            qos = cast(QoS, self.qos)
            qos.hold(message, tag)
            try:
                return callback(message)
            finally:
                qos.record(message, tag)

        return deliver


class Transport(kombu_redis.Transport):
    Channel = Channel
