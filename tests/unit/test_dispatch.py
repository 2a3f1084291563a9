from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from shared import dispatch
from shared.dispatch import publish_agent, publish_turn
from shared.errors import BrokerUnavailable, TransientError
from shared.schemas import Agent
from shared.tools.stack.services import reset_process_state


@pytest.fixture
def unreachable_broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """REDIS_URL on a loopback port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
    reset_process_state()
    yield
    monkeypatch.undo()
    reset_process_state()


def test_a_publish_the_broker_refuses_is_a_transient_error(unreachable_broker: None) -> None:
    turn_id = str(uuid.uuid4())
    with pytest.raises(BrokerUnavailable, match=f"support agent of turn {turn_id}") as caught:
        publish_agent(turn_id, Agent.SUPPORT, retrieve=False)
    assert isinstance(caught.value, TransientError)  # the merge task retries it
    with pytest.raises(BrokerUnavailable, match=f"workflow of turn {turn_id}"):
        publish_turn(turn_id, "parallel")


def test_publish_committed_marks_only_the_turns_it_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    turns = [(str(uuid.uuid4()), "parallel") for _ in range(4)]
    refused, down = turns[1][0], turns[2][0]
    tried: list[str] = []

    def publish(turn_id: str, topology: str) -> None:
        tried.append(turn_id)
        if turn_id == refused:
            raise ValueError("this one cannot be published")
        if turn_id == down:
            raise BrokerUnavailable("the broker is down")

    monkeypatch.setattr(dispatch, "publish_turn", publish)
    marked: list[list[str]] = []
    sent = dispatch.publish_committed(turns, mark=marked.append)
    # one turn that fails, even for an outage, does not hold back the ones behind it
    assert sent == [turns[0][0], turns[3][0]] and marked == [sent]
    assert tried == [t for t, _ in turns]

    tried.clear()
    marked.clear()
    sent = dispatch.publish_committed(turns, mark=marked.append, stop_at_outage=True)
    assert sent == [turns[0][0]] and marked == [sent]  # the rest would fail too
    assert tried == [t for t, _ in turns[:3]]

    marked.clear()
    assert dispatch.publish_committed(turns[1:3], mark=marked.append) == []
    assert marked == []  # nothing sent, nothing to mark


def test_the_dispatcher_publishes_at_once_and_marks_after_a_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published: list[tuple[str, float]] = []
    marked: list[tuple[list[str], float]] = []
    monkeypatch.setattr(
        dispatch, "publish_turn", lambda turn_id, _: published.append((turn_id, time.monotonic()))
    )
    monkeypatch.setattr(
        dispatch, "mark_sent", lambda ids: marked.append((list(ids), time.monotonic()))
    )
    dispatcher = dispatch.Dispatcher()
    turns = [str(uuid.uuid4()) for _ in range(3)]
    start = time.monotonic()
    for turn_id in turns:
        dispatcher.submit(turn_id, "parallel")
    deadline = time.monotonic() + 5
    while len(published) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t for t, _ in published] == turns
    assert published[-1][1] - start < dispatch.Dispatcher.MARK_LINGER_S
    while not marked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [ids for ids, _ in marked] == [turns]  # one UPDATE for the three
    assert marked[0][1] - published[0][1] >= dispatch.Dispatcher.MARK_LINGER_S * 0.9
    assert dispatcher.flush(5.0)
