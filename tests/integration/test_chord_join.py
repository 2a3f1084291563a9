"""A chord's last header part publishes the callback on its second round trip to Redis, and
the chord still completes exactly once, also beside Celery's own join (a worker of another
version), after a re-delivered part, and with a failed part."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import states
from celery.backends.redis import RedisBackend

from shared.dispatch import dispatch_app
from shared.result_backend import CHORD_KEYS, RedisResultBackend

pytestmark = pytest.mark.integration


class Chord:
    """A two-part chord whose callback goes to a queue of its own, read back from Redis."""

    def __init__(self, backend: RedisResultBackend, queue: str) -> None:
        self.backend = backend
        self.group = str(uuid.uuid4())
        self.queue = queue
        self.callback = dispatch_app().signature(
            "chordline.test.chord_callback", queue=self.queue, task_id=str(uuid.uuid4())
        )
        backend.set_chord_size(self.group, 2)

    def part(self, index: int) -> Any:
        return SimpleNamespace(
            id=f"{self.group}-part-{index}",
            group=self.group,
            group_index=index,
            chord=dict(self.callback),
        )

    def published(self) -> list[Any]:
        """This chord's callback messages on the queue: the arguments each one carries."""
        client = self.backend.client
        messages = [json.loads(raw) for raw in client.lrange(self.queue, 0, -1)]
        return [
            json.loads(_body(message))[0]
            for message in messages
            if message["headers"]["id"] == self.callback.id
        ]

    def clean(self) -> None:
        client = self.backend.client
        client.delete(*(self.backend.get_key_for_group(self.group, s) for s in CHORD_KEYS))


def _body(message: dict[str, Any]) -> str:
    return base64.b64decode(message["body"]).decode()


@pytest.fixture
def chords(services: None) -> Iterator[Any]:
    backend: Any = dispatch_app().backend
    assert isinstance(backend, RedisResultBackend)
    queue = f"chord-join-test-{uuid.uuid4()}"
    made: list[Chord] = []

    def make() -> Chord:
        made.append(Chord(backend, queue))
        return made[-1]

    yield make
    for chord in made:
        chord.clean()
    backend.client.delete(queue)


def test_the_last_part_publishes_the_callback_on_its_second_round_trip(
    chords: Any, redis_round_trips: list[bytes]
) -> None:
    warm = chords()  # scripts loaded into Redis, the broker connected: not what is counted
    for index in (0, 1):
        warm.backend.on_chord_part_return(warm.part(index), states.SUCCESS, "warm")
    chord = chords()
    chord.backend.on_chord_part_return(chord.part(0), states.SUCCESS, {"orchestrator": 1})
    assert chord.published() == []
    redis_round_trips.clear()

    chord.backend.on_chord_part_return(chord.part(1), states.SUCCESS, {"researcher": 2})

    sent = list(redis_round_trips)
    publish = [i for i, command in enumerate(sent) if chord.queue.encode() in command]
    assert publish and publish[0] == 1, [command[:60] for command in sent]
    # the results in header order, whichever part finished last
    assert chord.published() == [[[{"orchestrator": 1}, {"researcher": 2}]]]
    # the claim released and the chord marked done; its data gone
    client = chord.backend.client
    assert client.get(chord.backend.get_key_for_group(chord.group, ".c")) == b"done"
    assert not client.exists(chord.backend.get_key_for_group(chord.group, ".j"))


def test_a_part_delivered_again_after_the_end_publishes_nothing(chords: Any) -> None:
    chord = chords()
    chord.backend.on_chord_part_return(chord.part(1), states.SUCCESS, "r")
    chord.backend.on_chord_part_return(chord.part(0), states.SUCCESS, "o")
    chord.backend.on_chord_part_return(chord.part(0), states.SUCCESS, "o")  # re-delivered
    chord.backend.on_chord_part_return(chord.part(1), states.SUCCESS, "r")
    assert chord.published() == [[["o", "r"]]]


def test_a_part_delivered_twice_before_the_end_counts_once(chords: Any) -> None:
    chord = chords()
    chord.backend.on_chord_part_return(chord.part(0), states.SUCCESS, "o")
    chord.backend.on_chord_part_return(chord.part(0), states.SUCCESS, "o")
    assert chord.published() == []
    chord.backend.on_chord_part_return(chord.part(1), states.SUCCESS, "r")
    assert chord.published() == [[["o", "r"]]]


@pytest.mark.parametrize("celery_part", [0, 1])
def test_a_chord_joined_partly_by_celery_s_own_code_completes_once(
    chords: Any, celery_part: int
) -> None:
    """Workers of two versions in one fleet: the keys and their meaning are Celery's."""
    chord = chords()
    for index in (0, 1):
        join = RedisBackend.on_chord_part_return if index == celery_part else None
        if join is not None:
            join(chord.backend, chord.part(index), states.SUCCESS, f"part {index}")
        else:
            chord.backend.on_chord_part_return(chord.part(index), states.SUCCESS, f"part {index}")
    assert chord.published() == [[["part 0", "part 1"]]]
    # and a late copy of either part, through either code, publishes nothing more
    RedisBackend.on_chord_part_return(chord.backend, chord.part(0), states.SUCCESS, "part 0")
    chord.backend.on_chord_part_return(chord.part(1), states.SUCCESS, "part 1")
    assert len(chord.published()) == 1


def test_a_failed_part_fails_the_callback_instead_of_publishing_it(chords: Any) -> None:
    chord = chords()
    chord.backend.on_chord_part_return(chord.part(0), states.SUCCESS, "o")
    chord.backend.on_chord_part_return(
        chord.part(1), states.FAILURE, RuntimeError("retrieval gave up")
    )
    assert chord.published() == []
    meta = chord.backend.get_task_meta(chord.callback.id)
    assert meta["status"] == states.FAILURE
    assert "retrieval gave up" in str(meta["result"])
    chord.backend.client.delete(chord.backend.get_key_for_task(chord.callback.id))
