"""Scenario 17: admission holding turns and double texts interrupting them, while workers
are killed: every accepted turn still ends exactly once, held ones included."""

from __future__ import annotations

import time
import uuid

import pytest

from shared.client import enqueue_turn, get_turn
from tests.conftest import new_tenant
from tests.faults.rig import Rig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = "How much does the Growth plan cost?"
FOLLOW_UP = "And is there a discount for three warehouses?"


def test_17_held_and_interrupted_turns_while_workers_are_killed(rig: Rig) -> None:
    # three turns in flight at most; the rest held (up to a killed stage's recovery or two)
    holding = new_tenant(
        {"admission": {"max_in_flight": 3, "over_limit": "hold", "hold_max_s": 300}}
    )
    double_texting = new_tenant({"in_flight_policy": "interrupt"})
    pairs: list[tuple[str, str]] = []
    with rig.chaos() as load:
        held = [load.send(QUESTION, tenant=holding) for _ in range(8)]
        for _ in range(4):
            conversation = f"dt-{uuid.uuid4().hex[:8]}"
            first = enqueue_turn(double_texting, conversation, QUESTION)
            time.sleep(0.3)
            pairs.append((first, enqueue_turn(double_texting, conversation, FOLLOW_UP)))
        time.sleep(3)
    extra = [turn for pair in pairs for turn in pair]
    outcome = rig.verify(
        "17. held and interrupted turns, workers killed", load, extra=extra, target_s=120
    )
    assert all(turn_id is not None for turn_id in held)
    assert [get_turn(t or "").status for t in held] == ["completed"] * len(held)
    for first, second in pairs:
        ended, after = get_turn(first), get_turn(second)
        assert after.status == "completed"
        # exactly one of: the first was cancelled and the second carries it, or it completed
        assert (ended.status, after.carried_message) in (
            ("cancelled", QUESTION),
            ("completed", None),
        )
    assert outcome.cancelled == sum(
        1 for first, _ in pairs if get_turn(first).status == "cancelled"
    )
