"""Scenarios 1-4: worker processes killed mid-task, and a task that keeps killing its own."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid

import pytest
from sqlalchemy import select

from shared.client import get_turn
from shared.db.models import TurnSpan
from shared.db.session import session_scope
from shared.redis_conn import get_redis
from tests.faults.cluster import prefork_variant
from tests.faults.rig import Rig
from tests.faults.servers import wait_until
from workers.fault_hooks import pid_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUESTION = "How much does the Growth plan cost?"


def _pid_of_hung(turn_id: str, stage: str, *, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = get_redis().get(pid_key(turn_id, stage))
        if pid:
            return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no {stage} task of turn {turn_id} hung within {timeout_s} s")


def _stage_pids(turn_id: str, stage: str) -> list[int]:
    with session_scope() as session:
        return [
            int(pid or 0)
            for pid in session.scalars(
                select(TurnSpan.pid).where(
                    TurnSpan.turn_id == uuid.UUID(turn_id), TurnSpan.stage == stage
                )
            )
        ]


def test_1_sigkill_the_pool_child_running_a_header_task(rig: Rig) -> None:
    """The hook hangs each marked orchestrator when its stage starts (as a model call that
    does not return would); the prefork child that runs it is SIGKILLed while it hangs,
    before the stage wrote anything. Another process writes the stage's output."""
    command = prefork_variant(rig.cluster.command("orchestrator"))
    with rig.cluster.variant("orchestrator", command):
        rig.cluster.wait_ready(("orchestrator",))
        with rig.chaos() as load:
            hung = [
                load.send(f"{QUESTION} {rig.fault('hang', 'orchestrator', 30)}") for _ in range(3)
            ]
            killed: dict[str, int] = {}
            for turn_id in hung:
                assert turn_id is not None
                pid = _pid_of_hung(turn_id, "orchestrator")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed[turn_id] = pid
            time.sleep(2)
        outcome = rig.verify("1. SIGKILL pool child mid header task", load)
    fired = sum(rig.fired("hang", t, "orchestrator") > 0 for t in killed)
    outcome.notes["faults_fired"] = fired
    assert fired == len(hung), f"{fired} of {len(hung)} orchestrators hung"
    for turn_id, pid in killed.items():
        assert get_turn(turn_id).status == "completed"
        assert pid not in _stage_pids(turn_id, "orchestrator")  # another process wrote it


def test_2_sigkill_a_workers_main_process(rig: Rig) -> None:
    with rig.chaos() as load:
        hung = [load.send(f"{QUESTION} {rig.fault('hang', 'agent', 30)}") for _ in range(2)]
        for turn_id in hung:
            assert turn_id is not None
            _pid_of_hung(turn_id, "agent")  # the hook fired: the agent hangs
        rig.cluster.restart("agents")  # SIGKILL of the main process: threads die with it
        time.sleep(2)
    outcome = rig.verify("2. SIGKILL a worker's main process", load)
    fired = sum(rig.fired("hang", t, "agent") > 0 for t in hung)
    outcome.notes["faults_fired"] = fired
    assert fired == len(hung), f"{fired} of {len(hung)} agents hung"
    assert outcome.completed >= len(hung)
    for turn_id in hung:
        assert get_turn(turn_id or "").status == "completed"


def test_3_sigkill_the_merge_after_its_route_commits_before_its_agent_is_published(
    rig: Rig,
) -> None:
    """The merge routes a turn in one autocommit statement (``write_stage_output``), its own
    transaction: there is no moment between that write and its commit. The moment a crash
    can strand the turn is the next one: the route is committed, the turn is ``routed``, and
    no agent task exists yet. The hook SIGKILLs the merge worker right there, once per turn.

    The merge's message was never acknowledged, so Redis hands it out again after the
    visibility timeout (its write is refused, and it publishes the stored route's agent);
    the sweeper re-drives a routed turn's agent after the stage deadline; whichever comes
    first, the turn gets exactly one reply.
    """
    crashed: list[str] = []
    with rig.chaos() as load:
        # one at a time: a kill takes down the merges running beside it in the same worker,
        # and a neighbour whose route had just committed would die before its own hook fired
        for _ in range(2):
            turn_id = load.send(f"{QUESTION} {rig.fault('crash', 'merge')}")
            assert turn_id is not None
            crashed.append(turn_id)
            wait_until(
                lambda t=turn_id: rig.fired("crash", t, "merge") > 0,
                timeout_s=30,
                what="the hook kills the merge after its route committed",
            )
        time.sleep(2)
    outcome = rig.verify("3. SIGKILL merge after its commit, before publish", load)
    outcome.notes["faults_fired"] = sum(rig.fired("crash", t, "merge") for t in crashed)
    for turn_id in crashed:
        # the hook killed the merge once, right after its route committed ...
        assert rig.fired("crash", turn_id, "merge") == 1, "the merge was never killed"
        killed_pid = int(get_redis().get(pid_key(turn_id, "merge")) or 0)
        # ... so the one route of the turn is the killed process's (a later merge's write
        # was refused), and the agent still answered once (checked by verify())
        assert _stage_pids(turn_id, "merge") == [killed_pid]
        view = get_turn(turn_id)
        assert view.status == "completed" and view.next_agent


def test_4_a_poison_pill_fails_its_turn_after_bounded_deliveries(rig: Rig) -> None:
    command = prefork_variant(rig.cluster.command("researcher"))
    with rig.cluster.variant("researcher", command):
        rig.cluster.wait_ready(("researcher",))
        with rig.chaos() as load:
            poisoned = load.send(f"{QUESTION} {rig.fault('poison', 'researcher')}")
            time.sleep(6)
        outcome = rig.verify("4. poison pill kills its own process", load, meant_to_fail=1)
    assert poisoned is not None
    kills = rig.fired("poison", poisoned, "researcher")
    outcome.notes["faults_fired"] = kills
    assert kills >= 1, "the poison pill never killed its worker"
    view = get_turn(poisoned)
    assert view.status == "failed", view
    assert view.failure_reason and (
        "delivered" in view.failure_reason or "attempts" in view.failure_reason
    )
    assert view.agent_response  # the fallback reply
    assert outcome.failed >= 1
