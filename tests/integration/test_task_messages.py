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

from shared import contract, dispatch
from shared.config import get_settings
from shared.contract import AGENT_TASKS, MERGE_TASK, ORCHESTRATOR_TASK, RESEARCHER_TASK, make_celery
from shared.dispatch import reset_dispatch_app, set_dispatch_app
from shared.result_backend import RedisResultBackend
from shared.schemas import Agent, Topology
from shared.task_messages import merge_chord

pytestmark = pytest.mark.integration

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TURN = "3e62c258-02b2-4d92-b6d3-9a876de68770"


@pytest.fixture
def app(services: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """The dispatch app, every task routed to a queue of this test's own in the real Redis
    (workers of other tests may be consuming the turn queues)."""
    prefix = f"test-messages-{uuid.uuid4()}-"
    for name, route in list(contract.TASK_ROUTES.items()):
        monkeypatch.setitem(contract.TASK_ROUTES, name, {"queue": prefix + route["queue"]})
    app = make_celery("test-task-messages", get_settings())
    set_dispatch_app(app)
    try:
        yield app
    finally:
        client = _client(app)
        left = client.keys(f"{prefix}*")
        if left:
            client.delete(*left)
        reset_dispatch_app()


def _client(app: Celery) -> Any:
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    return backend.client


def published(app: Celery, name: str) -> list[dict[str, Any]]:
    """The messages on task ``name``'s queue, oldest first, taken off it."""
    client = _client(app)
    queue = contract.TASK_ROUTES[name]["queue"]
    messages = [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    client.delete(queue)
    return messages


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


def test_a_parallel_turns_chord_is_the_chord_celery_publishes(app: Celery) -> None:
    contract.turn_workflow(app, turn_id=TURN, topology=Topology.PARALLEL).apply_async()
    dispatch.publish_turn(TURN, Topology.PARALLEL.value)
    mine = []
    for name in (ORCHESTRATOR_TASK, RESEARCHER_TASK):
        theirs, my_message = published(app, name)  # on its queue: Celery's first, then mine
        assert my_message["headers"]["task"] == name
        assert comparable(my_message) == comparable(theirs)
        mine.append(my_message)
    # one chord: both header tasks name the same group and carry the same merge
    groups = {m["headers"]["group"] for m in mine}
    merges = {json.dumps(comparable(m)["body"][2]["chord"]) for m in mine}
    assert len(groups) == 1 and len(merges) == 1


def test_an_agent_is_the_message_celery_publishes(app: Celery) -> None:
    for agent in Agent:
        contract.agent_signature(app, turn_id=TURN, agent=agent, retrieve=False).apply_async()
        dispatch.publish_agent(TURN, agent, retrieve=False)
        theirs, mine = published(app, AGENT_TASKS[agent])
        assert comparable(mine) == comparable(theirs)


def test_the_merge_a_chord_publishes_is_the_message_celery_publishes(app: Celery) -> None:
    group, merge_id, client = (str(uuid.uuid4()) for _ in range(3))
    chord = merge_chord(app, {"turn_id": TURN}, merge_id=merge_id, group_id=group)
    chord["options"]["reply_to"] = client  # the publishing client's, not this thread's
    results = [{"stage": "orchestrator", "ok": True}, {"stage": "researcher", "ok": True}]
    app.signature(dict(chord)).delay(results)
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    backend._send_callback(app.signature(dict(chord)), results)
    theirs, mine = published(app, MERGE_TASK)
    assert mine["headers"]["task"] == MERGE_TASK
    given = (group, merge_id, client)
    assert comparable(mine, keep=given) == comparable(theirs, keep=given)
    assert comparable(mine)["body"][0] == [results]


def test_the_chord_goes_out_in_one_round_trip_with_its_size_before_its_tasks(
    app: Celery, redis_round_trips: list[bytes]
) -> None:
    header = (ORCHESTRATOR_TASK, RESEARCHER_TASK)
    queues = [contract.TASK_ROUTES[name]["queue"] for name in header]
    backend = app.backend
    assert isinstance(backend, RedisResultBackend)
    backend.client.ping()  # connected before the count starts
    redis_round_trips.clear()
    dispatch.publish_turn(TURN, Topology.PARALLEL.value)
    assert len(redis_round_trips) == 1
    trip = redis_round_trips[0]
    size_at = trip.index(b".s")
    assert all(size_at < trip.index(queue.encode()) for queue in queues)
    headers = [published(app, name)[0]["headers"] for name in header]
    assert [h["task"] for h in headers] == list(header)
    group = headers[0]["group"]
    assert int(backend.client.get(backend.get_key_for_group(group, ".s"))) == 2
