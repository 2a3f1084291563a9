"""The yardstick of `chordline bench --baseline`: a bare Celery chord of a turn's shape.

Four tasks and nothing else: ``orchestrator`` and ``researcher`` sleep their stage's
simulated time and return it with when they ran; the chord callback ``merge`` enqueues
``agent``, which sleeps the agent's time and records when it finished, with when each stage
ran and how long it slept, in one Redis hash (a few clock reads per turn, so that the bench
can show where each system's overhead goes, hop by hop). No Postgres, no outbox, no spans,
no streaming, no metrics, no task events. Celery is configured as chordline's workers are
where it matters to the engine (JSON, acks_late, prefetch 1, the Redis result backend for
the chord), and its workers run with the same pool type and size as chordline's Procfile
entries, on queues of their own, against the same Redis. Stage times are drawn by the same
seeded distributions as chordline's simulated providers, from the same message, so both do
identical simulated work.

What chordline costs beyond this, at the same arrivals, is chordline's own cost per turn.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
from typing import Any

import redis
from celery import Celery, chord

from shared.config import get_settings
from shared.kb.focus import retrieval_query
from shared.providers.simulated import LatencyDistribution, StageLatencies, draw_ms
from shared.tools.bench.overhead_hops import StageTimes, turn_hops
from shared.tools.stack.procfile import TURN_PROCESSES, read_procfile

QUEUE_PREFIX = "bare-"
DONE_KEY = "chordline:bare-chord:done"
TASKS = {
    "orchestrator": "bare.orchestrator",
    "researcher": "bare.researcher",
    "merge": "bare.merge",
    "agents": "bare.agent",
}


def bare_config() -> dict[str, Any]:
    url = get_settings().redis_url
    return {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": False,
        "task_routes": {name: {"queue": QUEUE_PREFIX + kind} for kind, name in TASKS.items()},
        "worker_hijack_root_logger": False,
    }


app = Celery("bare_chord", set_as_current=False)
app.add_defaults(bare_config)

_redis: redis.Redis | None = None
_redis_lock = threading.Lock()


def _done_store() -> redis.Redis:
    global _redis
    with _redis_lock:
        if _redis is None:
            _redis = redis.Redis.from_url(get_settings().redis_url or "")
        return _redis


@functools.cache
def _stage_times() -> tuple[dict[str, LatencyDistribution], float]:
    providers = get_settings().providers
    latencies = StageLatencies.from_settings(providers)
    distributions = {
        "orchestrator": latencies.orchestrator,
        "retrieval": latencies.retrieval,
        "agent": latencies.agent,
    }
    return distributions, providers.simulated_latency_scale


def _sleep_stage(stage: str, message: str) -> float:
    distributions, scale = _stage_times()
    ms = draw_ms(stage, message, distributions[stage], scale)
    time.sleep(ms / 1000)
    return ms


def _timed_stage(stage: str, message: str) -> list[float]:
    """[simulated ms, started at, finished at]."""
    started = time.time()
    ms = _sleep_stage(stage, message)
    return [ms, started, time.time()]


@app.task(name=TASKS["orchestrator"])
def orchestrator(message: str) -> list[float]:
    return _timed_stage("orchestrator", message)


@app.task(name=TASKS["researcher"])
def researcher(message: str) -> list[float]:
    # chordline's simulated reranker draws the retrieval time from what the researcher
    # reranks first: the first part of the message's focus (one draw per retrieval)
    return _timed_stage("retrieval", retrieval_query(message))


@app.task(name=TASKS["merge"], ignore_result=True)
def merge(header: list[list[float]], turn_id: str, message: str) -> None:
    kwargs = {"turn_id": turn_id, "message": message, "header": header, "merged_at": time.time()}
    agent.apply_async(kwargs=kwargs)


@app.task(name=TASKS["agents"], ignore_result=True)
def agent(turn_id: str, message: str, header: list[list[float]], merged_at: float) -> None:
    ms, started, finished = _timed_stage("agent", message)
    _done_store().hset(DONE_KEY, turn_id, json.dumps([header, merged_at, [ms, started, finished]]))


def submit(turn_id: str, message: str) -> None:
    """Publish one turn's chord, as a bare Celery producer does."""
    chord(
        [orchestrator.si(message), researcher.si(message)],
        merge.s(turn_id=turn_id, message=message),
    ).apply_async()


def release_results() -> None:
    """Let go of the results of the chords published here while Redis still answers.

    Celery's Redis backend keeps every chord's header results pending in the publisher
    (subscribed to their channels) until something waits for them, which the bench never
    does. Left to interpreter shutdown, their unsubscribe fails and Python prints a
    traceback; here they are unsubscribed while the connection is up. (Celery keeps them
    in ``_pending_results``, which has no public reader.)"""
    backend: Any = app.backend
    for mapping in backend._pending_results:
        for waiters in list(mapping.values()):
            for result in list(waiters.values()):
                backend.remove_pending_result(result)


def _finished_records() -> dict[str, Any]:
    raw: dict[bytes, bytes] = _done_store().hgetall(DONE_KEY)  # type: ignore[assignment]
    return {key.decode(): json.loads(value) for key, value in raw.items()}


def finished_turns() -> dict[str, tuple[float, float]]:
    """turn id -> (epoch seconds its agent finished, the ideal critical path in ms)."""
    done: dict[str, tuple[float, float]] = {}
    for turn_id, (header, _, (agent_ms, _, finished)) in _finished_records().items():
        done[turn_id] = (finished, max(ms for ms, _, _ in header) + agent_ms)
    return done


def finished_hops(arrivals: dict[str, float]) -> list[dict[str, float]]:
    """The hops of the finished turns among ``arrivals`` (turn id -> scheduled arrival)."""
    hops = []
    for turn_id, (header, merged_at, agent) in _finished_records().items():
        if turn_id in arrivals:
            headers = (StageTimes(started, finished, ms) for ms, started, finished in header)
            agent_times = StageTimes(agent[1], agent[2], agent[0])
            hops.append(turn_hops(arrivals[turn_id], headers, merged_at, agent_times))
    return hops


def all_finished(turn_ids: list[str]) -> bool:
    if not turn_ids:
        return True
    found: list[Any] = _done_store().hmget(DONE_KEY, turn_ids)
    return all(value is not None for value in found)


def forget_finished() -> None:
    _done_store().delete(DONE_KEY)


def worker_commands() -> dict[str, str]:
    """One worker per turn queue, with the pool type and size of chordline's Procfile entry
    for that queue, and nothing else: no events, no gossip, no mingle, warnings only."""
    entries = read_procfile()
    commands = {}
    for kind in TURN_PROCESSES:
        entry = entries[kind]
        pool = re.search(r"-P\s+(\S+)", entry)
        size = re.search(r"-c\s+(\d+)", entry)
        pool_args = (
            f"-P {pool.group(1) if pool else 'prefork'} "
            f"-c {size.group(1) if size else os.cpu_count()}"
        )
        commands[f"{QUEUE_PREFIX}{kind}"] = (
            f"celery -A shared.tools.bench.bare_chord worker -Q {QUEUE_PREFIX}{kind} {pool_args} "
            f"-n {QUEUE_PREFIX}{kind}@%h --without-gossip --without-mingle -l WARNING"
        )
    return commands
