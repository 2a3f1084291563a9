"""Waiting for workers outlasts a broker connection that breaks while it waits."""

from __future__ import annotations

import pytest
import redis

from shared.tools.stack.procfile import wait_for_workers


def test_a_broken_broker_connection_is_no_answer_yet() -> None:
    outcomes: list[object] = [
        redis.ConnectionError("Connection closed by server."),
        redis.ConnectionError("Connection closed by server."),
        [{"merge@host": {"ok": "pong"}}],
    ]

    def ping() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    wait_for_workers(["merge"], app_ping=ping, timeout_s=10)
    assert outcomes == []


def test_a_broker_that_stays_away_times_out_naming_its_error() -> None:
    def ping() -> object:
        raise redis.ConnectionError("Connection refused.")

    with pytest.raises(TimeoutError, match=r"\['merge'\].*ConnectionError: Connection refused"):
        wait_for_workers(["merge"], app_ping=ping, timeout_s=1)


def test_other_errors_are_not_swallowed() -> None:
    def ping() -> object:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        wait_for_workers(["merge"], app_ping=ping, timeout_s=1)
