"""Scenarios 5-9: Redis killed, down, full; a lost chord header; a flushed result backend."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from typing import cast

import pytest
import redis
from sqlalchemy import func, select

from shared import dispatch
from shared.client import get_turn
from shared.db.models import Turn, TurnOutbox
from shared.db.session import session_scope
from shared.dispatch import flush_dispatch, publish_turn
from shared.tools.stack.processes import PROJECT_ROOT, process_env
from tests.faults.load import MESSAGES
from tests.faults.rig import Rig
from tests.faults.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_5a_kill_9_redis_under_load_and_restart_with_aof(rig: Rig) -> None:
    with rig.chaos() as load:
        time.sleep(3)
        rig.redis.kill()
        time.sleep(2)
        rig.redis.start(appendonly=True)
        time.sleep(3)
    rig.verify("5a. kill -9 Redis (AOF on), restart", load)


def test_5b_kill_9_redis_without_aof_turns_recovered_from_postgres(rig: Rig) -> None:
    with rig.chaos() as load:
        time.sleep(3)
        rig.redis.kill()
        shutil.rmtree(rig.redis.root / "appendonlydir", ignore_errors=True)
        rig.redis.start(appendonly=False)  # comes back empty: every queue and counter lost
        time.sleep(4)
    outcome = rig.verify("5b. kill -9 Redis (AOF off), restart empty", load)
    assert outcome.completed > 0
    rig.redis.client().config_set("appendonly", "yes")  # AOF on again for what follows


def test_6_redis_down_at_enqueue_turns_are_kept_and_dispatched_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which thread tried to publish which turn: enqueue_turn must hand the publish to this
    # process's dispatcher thread, and never wait for the broker in the caller's thread.
    publishes: list[tuple[str, int]] = []
    real_publish_turn = dispatch.publish_turn

    def recorded_publish_turn(turn_id: str, topology: str) -> None:
        publishes.append((turn_id, threading.get_ident()))
        real_publish_turn(turn_id, topology)

    monkeypatch.setattr(dispatch, "publish_turn", recorded_publish_turn)
    caller = threading.get_ident()
    with rig.chaos() as load:
        time.sleep(1)
        rig.redis.kill()
        during = [load.send(MESSAGES[i % len(MESSAGES)]) for i in range(5)]
        time.sleep(3)
        rig.redis.start(appendonly=True)
        time.sleep(2)
    outcome = rig.verify("6. Redis down at enqueue", load)
    # enqueue_turn kept every turn (Postgres holds it) and did not wait for the broker
    assert all(during), "enqueue_turn refused a turn while only Redis was down"
    assert flush_dispatch(timeout_s=60), "the dispatcher thread never got through its turns"
    tried_by = {t: {thread for turn, thread in publishes if turn == t} for t in during}
    assert all(tried_by.values()), f"turns never handed to the dispatcher: {tried_by}"
    assert not any(caller in threads for threads in tried_by.values()), (
        "enqueue_turn published to the broker in the caller's thread"
    )
    for turn_id in during:
        assert get_turn(turn_id or "").status == "completed"
    with session_scope() as session:
        undispatched = session.scalar(
            select(func.count())
            .select_from(TurnOutbox)
            .where(
                TurnOutbox.turn_id.in_([uuid.UUID(t or "") for t in during]),
                TurnOutbox.dispatched_at.is_(None),
            )
        )
    assert undispatched == 0
    assert outcome.lost == 0


def _start_worker_and_wait(rig: Rig, name: str) -> subprocess.CompletedProcess[str]:
    command = rig.cluster.command(name)
    return subprocess.run(
        ["/bin/sh", "-c", f"exec {command}"],
        cwd=PROJECT_ROOT,
        env=process_env({**os.environ, **rig.cluster.env}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_7_redis_at_maxmemory_fails_loudly_and_evicts_nothing(rig: Rig) -> None:
    admin = rig.redis.client()
    evicted_before = int(admin.info("stats")["evicted_keys"])
    with rig.chaos() as load:
        time.sleep(2)
        admin.config_set("maxmemory", "1")  # every write that needs memory is refused now
        try:
            with pytest.raises(Exception, match="maxmemory") as refused:
                publish_turn(str(uuid.uuid4()), "parallel")
            time.sleep(3)
        finally:
            admin.config_set("maxmemory", "0")
        time.sleep(2)
    rig.verify("7. Redis at maxmemory", load)
    assert "maxmemory" in str(refused.value)
    assert int(admin.info("stats")["evicted_keys"]) == evicted_before  # nothing evicted

    # A worker refuses to start against a Redis that may evict, and says why.
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        result = _start_worker_and_wait(rig, "merge")
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
    assert result.returncode == 78
    assert "maxmemory-policy is 'allkeys-lru'" in result.stderr
    assert "noeviction" in result.stderr


def _queued_messages_of(client: redis.Redis, queue: str, turn_ids: list[str]) -> list[str]:
    """The raw messages on a queue whose task is for one of these turns."""

    def body(raw: str) -> str:
        return base64.b64decode(json.loads(raw)["body"]).decode(errors="replace")

    messages = cast(list[str], client.lrange(queue, 0, -1))  # the client decodes responses
    return [raw for raw in messages if any(t in body(raw) for t in turn_ids)]


def test_8_a_lost_chord_header_is_re_driven_by_the_sweeper(rig: Rig) -> None:
    admin = rig.redis.client()
    with rig.chaos() as load, rig.cluster.held_down("orchestrator"):
        lost = [t for t in (load.send(MESSAGES[1]) for _ in range(3)) if t]
        assert len(lost) == 3, f"Postgres is up, yet turns were refused: {dict(load.refused)}"
        wait_until(
            lambda: len(_queued_messages_of(admin, "orchestrator", lost)) == len(lost),
            timeout_s=60,
            what="the header tasks are queued",
        )
        for raw in _queued_messages_of(admin, "orchestrator", lost):
            admin.lrem("orchestrator", 1, raw)  # the chord header is gone for good
    rig.verify("8. lost chord header", load)
    with session_scope() as session:
        attempts = session.scalars(
            select(Turn.attempts).where(Turn.id.in_([uuid.UUID(t) for t in lost]))
        ).all()
    assert len(attempts) == 3 and all(a >= 1 for a in attempts), attempts  # each re-driven
    assert all(get_turn(t).status == "completed" for t in lost)


def _researched(turn_ids: list[str]) -> bool:
    with session_scope() as session:
        done = session.scalar(
            select(func.count())
            .select_from(Turn)
            .where(Turn.id.in_([uuid.UUID(t) for t in turn_ids]), Turn.researched_at.is_not(None))
        )
    return done == len(turn_ids)


def _flush_result_backend(client: redis.Redis) -> int:
    flushed = 0
    for pattern in ("celery-task-meta-*", "*.j", "*.t", "*.s", "*.d", "*.c"):
        for key in client.scan_iter(match=pattern, count=1000):
            with contextlib.suppress(redis.ResponseError):
                flushed += int(client.delete(key))
    return flushed


def test_9_result_backend_flushed_mid_chord_turns_converge_from_postgres(rig: Rig) -> None:
    admin = rig.redis.client()
    with rig.chaos() as load:
        with rig.cluster.held_down("orchestrator"):
            mid_chord = [t for t in (load.send(MESSAGES[0]) for _ in range(3)) if t]
            assert len(mid_chord) == 3, (
                f"Postgres is up, yet turns were refused: {dict(load.refused)}"
            )
            wait_until(lambda: _researched(mid_chord), timeout_s=60, what="researchers done")
            flushed = _flush_result_backend(admin)
        time.sleep(2)
    rig.verify("9. result backend flushed mid-chord", load)
    assert flushed > 0
    assert all(get_turn(t).status == "completed" for t in mid_chord)
