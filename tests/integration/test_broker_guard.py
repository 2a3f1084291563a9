"""A worker's broker connection lost mid-BRPOP: Celery's clean-up (``collect()`` then
``close()``) and late acknowledgements fail as lost connections, never with the
AttributeError that ended workers (workers/broker_guard.py). Unacked messages stay in Redis.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import redis as redis_transport

from shared.config import get_settings
from shared.redis_conn import get_redis
from tests.faults.proxy import TcpProxy
from workers import broker_guard

pytestmark = [pytest.mark.integration]


def test_a_broken_connection_cleans_up_as_celery_does_without_attribute_errors(
    services: None,
) -> None:
    broker_guard.install()
    url = get_settings().redis_url or ""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TcpProxy(port).start()  # the worker's path to Redis, which we cut below
    queue, idle = f"guard-{uuid.uuid4().hex[:8]}", f"guard-idle-{uuid.uuid4().hex[:8]}"
    redis = get_redis()
    tags: list[str] = []
    try:
        connection = Connection(proxy.url_for(url, port))
        channel = connection.default_channel
        assert isinstance(channel, redis_transport.Channel)
        channel.basic_publish(channel.prepare_message("hello"), exchange="", routing_key=queue)
        message = channel.basic_get(queue, no_ack=False)  # delivered, not acknowledged
        assert message is not None
        tag = message.delivery_tag
        assert tag is not None
        tags.append(tag)
        assert redis.hexists("unacked", tag)
        # Consumers on empty queues, on the default channel and on a second one (a worker
        # has its control channel too): their BRPOPs are in flight when Redis goes away.
        other = connection.channel()
        assert isinstance(other, redis_transport.Channel)
        channel.basic_consume(idle, False, lambda *_: None, consumer_tag="guard")
        other.basic_consume(idle, False, lambda *_: None, consumer_tag="guard-other")
        with pytest.raises(socket.timeout):
            connection.drain_events(timeout=0.2)
        proxy.close()  # Redis unreachable: every open connection reset, no new one accepted

        # Celery's Consumer.on_connection_error_after_connected, in order:
        # collect(): closing the default channel fails reading its pending BRPOP, closing
        # the other one fails the same way and ends the loop over the transport's channels,
        # and the transport is detached from the connection.
        connection.collect()
        assert not channel.closed
        connection.close()  # closes the default channel again: its unacked restore runs
        with pytest.raises(connection.connection_errors):
            message.ack()  # a task that was running when the connection broke finishes

        # Nothing lost: the message is still in the unacked index for restore_visible.
        assert redis.hexists("unacked", tag)
    finally:
        proxy.close()
        for tag in tags:
            redis.hdel("unacked", tag)
            redis.zrem("unacked_index", tag)
        redis.delete(queue, idle)


def test_install_is_idempotent() -> None:
    channel_class: Any = redis_transport.Channel  # _connparams is private: not in the stubs
    broker_guard.install()
    guarded = channel_class._connparams
    broker_guard.install()
    assert channel_class._connparams is guarded
