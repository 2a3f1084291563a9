"""A chord's size goes to Redis in one round trip, as Celery's chord counting reads it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.connection

from shared.dispatch import dispatch_app

pytestmark = pytest.mark.integration


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The commands this process sends to Redis, one entry per write to a socket."""
    sent: list[bytes] = []
    send: Any = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else bytes(command))
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    yield sent


def test_the_chord_size_and_a_fresh_counter_are_written_in_one_round_trip(
    services: None, round_trips: list[bytes]
) -> None:
    backend: Any = dispatch_app().backend
    group_id = str(uuid.uuid4())
    counter = backend.get_key_for_group(group_id, ".c")
    size = backend.get_key_for_group(group_id, ".s")
    backend.client.set(counter, 5)  # left by an earlier run of the same frozen chord
    round_trips.clear()

    backend.set_chord_size(group_id, 2)

    assert len(round_trips) == 1
    assert b"DEL" in round_trips[0] and b"SET" in round_trips[0]
    assert backend.client.get(size) == b"2"
    assert not backend.client.exists(counter)
    assert 0 < backend.client.ttl(size) <= backend.chord_expires
    backend.client.delete(size)
