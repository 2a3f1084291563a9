"""The turn's own task messages (shared/task_messages.py) are the messages Celery's
``apply_async`` publishes for the same tasks, field for field but their ids and the time
they were sent; the chord goes out in one round trip, its size first (real Redis)."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Collection, Iterator
from typing import Any

import pytest
from celery import Celery
from redis.commands.core import ListCommands

from shared import contract, dispatch
from shared.contract import MERGE_TASK, ORCHESTRATOR_TASK, RESEARCHER_TASK
from shared.dispatch import dispatch_app
from shared.result_backend import RedisResultBackend
from shared.schemas import Agent, Topology
from shared.task_messages import merge_chord

pytestmark = pytest.mark.integration

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TURN = "3e62c258-02b2-4d92-b6d3-9a876de68770"


@pytest.fixture
def app(services: None) -> Celery:
    return dispatch_app()


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every message pushed onto a queue from now on, by kombu or by chordline, kept here
    instead of sent (workers of other tests may be consuming the turn queues)."""
    kept: list[tuple[str, dict[str, Any]]] = []

    def lpush(self: Any, name: str, *values: Any) -> Any:
        kept.extend((name, json.loads(value)) for value in values)
        return self if hasattr(self, "command_stack") else len(values)

    monkeypatch.setattr(ListCommands, "lpush", lpush)
    yield kept


def comparable(message: dict[str, Any], keep: Collection[str] = ()) -> dict[str, Any]:
    """The message with its body decoded, every id made for this publish (all but the turn's
    and ``keep``) replaced by its order of appearance, and the sent-at stamp left out."""
    message = json.loads(json.dumps(message))
    message["body"] = json.loads(base64.b64decode(message["body"]))
    assert isinstance(message["headers"].pop(contract.SENT_AT_HEADER), float)
    text = json.dumps(message, sort_keys=True)
    ids: dict[str, str] = {}
    kept = {TURN, *keep}
    same: dict[str, Any] = json.loads(
        UUID.sub(
            lambda m: (
                m.group() if m.group() in kept else ids.setdefault(m.group(), f"id-{len(ids)}")
            ),
            text,
        )
    )
    return same


def test_a_parallel_turns_chord_is_the_chord_celery_publishes(
    app: Celery, pushed: list[tuple[str, dict[str, Any]]]
) -> None:
    contract.turn_workflow(app, turn_id=TURN, topology=Topology.PARALLEL).apply_async()
    celerys = list(pushed)
    pushed.clear()
    dispatch.publish_turn(TURN, Topology.PARALLEL.value)
    assert [queue for queue, _ in pushed] == [queue for queue, _ in celerys]
    assert [m["headers"]["task"] for _, m in pushed] == [ORCHESTRATOR_TASK, RESEARCHER_TASK]
    for (_, mine), (_, theirs) in zip(pushed, celerys, strict=True):
        assert comparable(mine) == comparable(theirs)
    # one chord: both header tasks name the same group and carry the same merge
    groups = {m["headers"]["group"] for _, m in pushed}
    merges = {json.dumps(comparable(m)["body"][2]["chord"]) for _, m in pushed}
    assert len(groups) == 1 and len(merges) == 1


def test_an_agent_is_the_message_celery_publishes(
    app: Celery, pushed: list[tuple[str, dict[str, Any]]]
) -> None:
    for agent in Agent:
        pushed.clear()
        contract.agent_signature(app, turn_id=TURN, agent=agent, retrieve=False).apply_async()
        dispatch.publish_agent(TURN, agent, retrieve=False)
        (their_queue, theirs), (my_queue, mine) = pushed
        assert my_queue == their_queue
        assert comparable(mine) == comparable(theirs)


def test_the_merge_a_chord_publishes_is_the_message_celery_publishes(
    app: Celery, pushed: list[tuple[str, dict[str, Any]]]
) -> None:
    group, merge_id, client = (str(uuid.uuid4()) for _ in range(3))
    chord = merge_chord(app, turn_id=TURN, merge_id=merge_id, group_id=group)
    chord["options"]["reply_to"] = client  # the publishing client's, not this thread's
    results = [{"stage": "orchestrator", "ok": True}, {"stage": "researcher", "ok": True}]
    app.signature(dict(chord)).delay(results)
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    backend._send_callback(app.signature(dict(chord)), results)
    (their_queue, theirs), (my_queue, mine) = pushed
    assert my_queue == their_queue
    assert mine["headers"]["task"] == MERGE_TASK
    given = (group, merge_id, client)
    assert comparable(mine, keep=given) == comparable(theirs, keep=given)
    assert comparable(mine)["body"][0] == [results]


def test_the_chord_goes_out_in_one_round_trip_with_its_size_before_its_tasks(
    app: Celery, monkeypatch: pytest.MonkeyPatch, redis_round_trips: list[bytes]
) -> None:
    queues = {name: f"test-chord-{uuid.uuid4()}" for name in (ORCHESTRATOR_TASK, RESEARCHER_TASK)}
    for name, queue in queues.items():
        monkeypatch.setitem(contract.TASK_ROUTES, name, {"queue": queue})
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    client = backend.client
    try:
        redis_round_trips.clear()
        dispatch.publish_turn(TURN, Topology.PARALLEL.value)
        assert len(redis_round_trips) == 1
        trip = redis_round_trips[0]
        size_at = trip.index(b".s")
        assert all(size_at < trip.index(queue.encode()) for queue in queues.values())
        headers = [json.loads(client.lpop(queue))["headers"] for queue in queues.values()]
        assert [h["task"] for h in headers] == [ORCHESTRATOR_TASK, RESEARCHER_TASK]
        group = headers[0]["group"]
        assert int(client.get(backend.get_key_for_group(group, ".s"))) == 2
    finally:
        client.delete(*queues.values())
