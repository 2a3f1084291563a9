"""A chord's size goes to Redis in one round trip, as Celery's chord counting reads it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.dispatch import dispatch_app

pytestmark = pytest.mark.integration


def test_the_chord_size_is_set_and_an_earlier_claim_cleared_in_one_round_trip(
    services: None, redis_round_trips: list[bytes]
) -> None:
    backend: Any = dispatch_app().backend
    group_id = str(uuid.uuid4())
    claim = backend.get_key_for_group(group_id, ".c")
    size = backend.get_key_for_group(group_id, ".s")
    backend.client.set(claim, "done")  # left by an earlier run of the same frozen chord
    redis_round_trips.clear()

    backend.set_chord_size(group_id, 2)

    assert len(redis_round_trips) == 1
    assert b"DEL" in redis_round_trips[0] and b"SET" in redis_round_trips[0]
    assert backend.client.get(size) == b"2"
    assert not backend.client.exists(claim)
    assert 0 < backend.client.ttl(size) <= backend.chord_expires
    backend.client.delete(size)
