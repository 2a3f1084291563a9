"""`chordline doctor` run as a user runs it, against this session's real Postgres, Redis and
Procfile workers: all ok with every worker and beat running; worker and beat checks failing
where no worker listens; a dead DATABASE_URL failing by name instead of "all fine"."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared.heartbeat import SWEEPER_HEARTBEAT_KEY
from shared.redis_conn import get_redis
from shared.tools.stack.procfile import start_workers
from tests.conftest import ARTIFACTS
from tests.ops.test_flower import free_port
from tests.ops.test_misconfiguration import run_chordline

pytestmark = pytest.mark.integration

STACK = [
    "postgres",
    "migrations",
    "pgvector",
    "redis",
    "eviction policy",
    "persistence",
    "worker orchestrator",
    "worker researcher",
    "worker merge",
    "worker agents",
    "worker maintenance",
    "beat",
]
WORKER_CHECKS = [name for name in STACK if name.startswith("worker ")]


def run_doctor(**overrides: str) -> tuple[int, dict[str, Any], list[str], float]:
    """`chordline doctor --json`: exit code, report, stderr lines, seconds taken."""
    env = {**os.environ, "CHORDLINE_PROVIDERS": "offline", **overrides}
    outcome = run_chordline("doctor", "--json", env=env)
    assert outcome.stdout.strip(), outcome.stderr_lines
    return outcome.code, json.loads(outcome.stdout), outcome.stderr_lines, outcome.elapsed_s


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == STACK
    return checks


@pytest.fixture
def beat(workers: None) -> Iterator[None]:
    """The Procfile's beat, run until the sweeper it schedules has written a heartbeat."""
    get_redis().delete(SWEEPER_HEARTBEAT_KEY)  # only this beat's sweeps may count
    group = start_workers(
        ["beat"],
        env={**os.environ, "CHORDLINE_CELERY_SWEEPER_INTERVAL_S": "1"},
        log_dir=ARTIFACTS / "worker-logs",
    )
    try:
        deadline = time.monotonic() + 60
        while get_redis().get(SWEEPER_HEARTBEAT_KEY) is None:
            assert time.monotonic() < deadline, "no sweeper heartbeat 60 s after beat started"
            time.sleep(0.5)
        yield
    finally:
        group.stop_all()


def test_doctor_is_all_ok_with_every_worker_and_beat_running(beat: None) -> None:
    code, report, errors, _ = run_doctor()
    checks = by_name(report)
    assert code == 0, report
    assert errors == []
    assert report["ok"] is True
    assert all(check["ok"] for check in checks.values()), checks
    assert checks["eviction policy"]["detail"] == "maxmemory-policy noeviction"
    assert checks["persistence"]["detail"].startswith("AOF")
    assert checks["pgvector"]["detail"].startswith("pgvector ")
    for name in WORKER_CHECKS:
        queue = name.removeprefix("worker ")
        assert f"{queue}@" in checks[name]["detail"], checks[name]
    assert "ran" in checks["beat"]["detail"]


def test_doctor_fails_the_worker_and_beat_checks_where_no_worker_listens(services: None) -> None:
    # The session's Redis, another database of it: Celery's broadcasts and queues are per
    # database, so no worker of this session (started or not) consumes or answers there.
    parts = urlsplit(os.environ["REDIS_URL"])
    empty_broker = urlunsplit(parts._replace(path="/9"))
    code, report, errors, _ = run_doctor(REDIS_URL=empty_broker)
    assert code == 1, report
    checks = by_name(report)
    assert report["ok"] is False
    for name in ("postgres", "migrations", "pgvector", "redis", "eviction policy", "persistence"):
        assert checks[name]["ok"], checks[name]
    for name in WORKER_CHECKS:
        queue = name.removeprefix("worker ")
        assert not checks[name]["ok"]
        assert checks[name]["detail"].startswith(f"no worker answers on queue {queue}")
        assert f"chordline proc {queue}" in checks[name]["fix"]
    assert not checks["beat"]["ok"]
    assert checks["beat"]["detail"].startswith("no sweeper heartbeat")
    assert errors == [f"error: doctor: {', '.join([*WORKER_CHECKS, 'beat'])} failed"]


def test_doctor_names_a_database_url_it_cannot_reach(services: None) -> None:
    port = free_port()
    code, report, errors, elapsed = run_doctor(
        DATABASE_URL=f"postgresql://u:secret@127.0.0.1:{port}/chordline"
    )
    assert code == 1, report
    checks = by_name(report)
    postgres = checks["postgres"]
    assert not postgres["ok"]
    assert (
        postgres["detail"]
        == f"DATABASE_URL: cannot connect to 127.0.0.1:{port} (connection refused)"
    )
    assert "DATABASE_URL" in postgres["fix"]
    for name in ("migrations", "pgvector"):
        assert checks[name]["skipped"] and not checks[name]["ok"]
    assert len(errors) == 1 and errors[0].startswith("error: doctor: postgres"), errors
    assert "secret" not in json.dumps(report) + errors[0]
    assert elapsed < 10


def test_doctor_fails_a_redis_that_evicts_and_keeps_nothing(services: None) -> None:
    admin = get_redis()
    saved: dict[str, str] = {}
    for key in ("maxmemory-policy", "appendonly", "save"):
        value = admin.config_get(key)[key]
        assert value is not None, key
        saved[key] = value
    parts = urlsplit(os.environ["REDIS_URL"])
    try:
        admin.config_set("maxmemory-policy", "allkeys-lru")
        admin.config_set("appendonly", "no")
        admin.config_set("save", "")
        code, report, _, _ = run_doctor(REDIS_URL=urlunsplit(parts._replace(path="/9")))
    finally:
        for key, value in saved.items():
            admin.config_set(key, value)
    checks = by_name(report)
    assert code == 1 and report["ok"] is False
    assert checks["redis"]["ok"]
    eviction, persistence = checks["eviction policy"], checks["persistence"]
    assert not eviction["ok"]
    assert (
        eviction["detail"]
        == "maxmemory-policy is 'allkeys-lru': a full Redis would drop queued turns"
    )
    assert "noeviction" in eviction["fix"]
    assert not persistence["ok"]
    assert persistence["detail"].startswith("no persistence (appendonly no, save empty)")
    assert "appendonly yes" in persistence["fix"]
