from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

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
