"""A worker outlives a Redis restart: a channel whose connection is gone fails as a lost
connection (which Celery recovers from), never with an AttributeError (which ends the worker).

What happened without this: Redis killed (SIGKILL) and back a second later, and 1 to 3 of
the five turn workers exited with ``Unrecoverable error: AttributeError("'NoneType' object
has no attribute 'hostname'")``. The path, in kombu's Redis transport (5.7):

1. The consumer loses its connection and Celery cleans up
   (``Consumer.on_connection_error_after_connected``): ``Connection.collect()``, then
   ``Connection.close()``, then a new connection.
2. ``collect()`` closes the default channel, the one holding the delivered, unacknowledged
   task messages. ``Channel.close`` first reads the reply of a BRPOP still in flight (added
   by kombu#1733); with the connection gone that read raises ``ConnectionError``, which
   ``maybe_close_channel`` swallows, so the channel stays half closed: not marked closed,
   its unacked messages not restored. Closing the transport's other channels (the
   worker's control channel, also mid-read) fails the same way and ends that loop before
   it reaches the default channel again. ``collect()`` then detaches the transport from
   its connection: ``transport.client = None``.
3. ``close()`` closes the same default channel again (kombu keeps ``_default_channel``).
   This time it reaches ``QoS.restore_unacked_once``, which needs a Redis client; the
   channel's pool was just disconnected, so it builds a new one in ``Channel._connparams``
   from ``transport.client.hostname``, and ``transport.client`` is ``None``. An
   ``AttributeError`` is neither a connection nor a channel error, so Celery reports it as
   unrecoverable and the worker exits. The same error from ``_connparams`` on a detached
   transport is reported upstream (celery/kombu#582, there from a fanout queue delete).

The same happens, as ``'NoneType' object has no attribute 'client'``, when a task that was
running when the connection broke finishes: its acknowledgement goes to the old, closed
channel (``channel.connection`` is ``None``), and the event loop that runs it ends the
worker.

The guard, installed when a worker starts: ``_connparams`` of a channel whose transport no
longer belongs to a connection raises ``redis.ConnectionError``. That is one of the
transport's connection errors, so the second close is ignored like the first, a late
acknowledgement is logged as "Couldn't ack" and the worker goes on with its new
connection. Nothing is lost and acks_late holds: every delivered, unacknowledged message is
still in Redis's ``unacked`` index (written before its task ran), and the periodic
``restore_visible`` of the workers puts it back on its queue once the visibility timeout has
passed, as for a killed worker. A channel that can still reach Redis (a warm shutdown)
restores its messages at once, as before.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as redis_transport

_GUARDED = "_chordline_guarded"


class ChannelDetached(redis.ConnectionError):
    """The channel's broker connection was closed; it cannot reach Redis any more."""


def channel_detached(channel: Any) -> bool:
    """True when the channel's transport no longer belongs to a kombu Connection."""
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def install() -> None:
    """Guard kombu's Redis ``Channel._connparams``, once per process (idempotent)."""
    channel_class: Any = redis_transport.Channel
    original = channel_class._connparams
    if getattr(original, _GUARDED, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if channel_detached(self):
            raise ChannelDetached(ChannelDetached.__doc__)
        return original(self, asynchronous=asynchronous)

    setattr(_connparams, _GUARDED, True)
    _connparams.__doc__ = original.__doc__
    channel_class._connparams = _connparams
