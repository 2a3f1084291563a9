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


def test_1_sigkill_the_pool_child_running_a_header_task_mid_call(rig: Rig) -> None:
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
        rig.verify("1. SIGKILL pool child mid header task", load)
    for turn_id, pid in killed.items():
        assert get_turn(turn_id).status == "completed"
        assert pid not in _stage_pids(turn_id, "orchestrator")  # another process wrote it


def test_2_sigkill_a_workers_main_process(rig: Rig) -> None:
    with rig.chaos() as load:
        hung = [load.send(f"{QUESTION} {rig.fault('hang', 'agent', 30)}") for _ in range(2)]
        for turn_id in hung:
            assert turn_id is not None
            _pid_of_hung(turn_id, "agent")
        rig.cluster.restart("agents")  # SIGKILL of the main process: threads die with it
        time.sleep(2)
    outcome = rig.verify("2. SIGKILL a worker's main process", load)
    assert outcome.completed >= len(hung)
    for turn_id in hung:
        assert get_turn(turn_id or "").status == "completed"


def test_3_sigkill_the_merge_between_its_write_and_its_commit(rig: Rig) -> None:
    with rig.chaos() as load:
        crashed = [load.send(f"{QUESTION} {rig.fault('crash', 'merge')}") for _ in range(2)]
        time.sleep(6)
    rig.verify("3. SIGKILL merge between write and commit", load)
    for turn_id in crashed:
        view = get_turn(turn_id or "")
        assert view.status == "completed" and view.next_agent
        assert len(_stage_pids(turn_id or "", "merge")) == 1


def test_4_a_poison_pill_fails_its_turn_after_bounded_deliveries(rig: Rig) -> None:
    command = prefork_variant(rig.cluster.command("researcher"))
    with rig.cluster.variant("researcher", command):
        rig.cluster.wait_ready(("researcher",))
        with rig.chaos() as load:
            poisoned = load.send(f"{QUESTION} {rig.fault('poison', 'researcher')}")
            time.sleep(6)
        outcome = rig.verify("4. poison pill kills its own process", load, meant_to_fail=1)
    assert poisoned is not None
    view = get_turn(poisoned)
    assert view.status == "failed", view
    assert view.failure_reason and (
        "delivered" in view.failure_reason or "attempts" in view.failure_reason
    )
    assert view.agent_response  # the fallback reply
    assert outcome.failed >= 1
