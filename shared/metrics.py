"""Prometheus metrics of chordline's workers, and how a worker process serves them.

What is measured, and where:

- per task, in the process that ran it, from Celery's task signals: its run time
  (``chordline_stage_duration_seconds``), its wait between publish and start
  (``chordline_queue_wait_seconds``, from the sent-at stamp every published task carries),
  its outcome (``chordline_tasks_total``) and its retries (``chordline_task_retries_total``);
- per turn, once, by the agents worker that completed it: latency from acceptance to the
  committed reply by topology and agent (``chordline_turn_duration_seconds``), the
  knowledge level (``chordline_kb_level_total``), the stages that fell back
  (``chordline_stage_fallbacks_total``) and how turns ended (``chordline_turns_total``).

The hot path pays for a clock read, a dict operation and a histogram observation per
task. Per-turn figures need the turn's row (acceptance time, topology) and its spans, so
the task only hands the turn's id to a bounded queue; a background thread reads finished
turns in batches, one query each, and observes them. When that thread falls behind, ids
are dropped and counted (``chordline_metrics_dropped_total``) rather than slowing a turn.

Metrics are made only when a worker starts serving (``start_exporter``): a prefork pool's
children must inherit the multiprocess mode chosen before the first metric exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Model calls take 0.3-2 s; a turn has a budget of 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20)
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Instruments:
    """Every metric a worker records; made once per process, on first use."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.stage_seconds = Histogram(
            "chordline_stage_duration_seconds",
            "Run time of one task, by stage and task name.",
            ["stage", "task"],
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait_seconds = Histogram(
            "chordline_queue_wait_seconds",
            "From publish to the start of the task, by queue.",
            ["queue"],
            buckets=WAIT_BUCKETS,
        )
        self.tasks = Counter(
            "chordline_tasks", "Tasks that ended, by task name and state.", ["task", "state"]
        )
        self.retries = Counter("chordline_task_retries", "Task retries, by task name.", ["task"])
        self.turn_seconds = Histogram(
            "chordline_turn_duration_seconds",
            "From the turn's acceptance to its committed reply, by topology and agent.",
            ["topology", "agent"],
            buckets=LATENCY_BUCKETS,
        )
        self.kb_levels = Counter(
            "chordline_kb_level",
            "Completed turns by the knowledge level the researcher found.",
            ["kb_information_level"],
        )
        self.fallbacks = Counter(
            "chordline_stage_fallbacks",
            "Stages that fell back (default route, no retrieval, fallback reply), by stage.",
            ["stage"],
        )
        self.turns = Counter("chordline_turns", "Turns that ended, by status.", ["status"])
        self.dropped = Counter(
            "chordline_metrics_dropped",
            "Finished turns not observed because the recorder fell behind.",
        )


_instruments: Instruments | None = None
_instruments_lock = threading.Lock()


def instruments() -> Instruments:
    global _instruments
    if _instruments is None:
        with _instruments_lock:
            if _instruments is None:
                _instruments = Instruments()
    return _instruments


# --------------------------------------------------------------------------- per turn


@dataclass(frozen=True)
class FinishedTurn:
    turn_id: str
    tenant_id: str
    topology: str
    status: str
    agent: str | None
    kb_information_level: str | None
    latency_s: float | None
    agent_fallback: bool
    fallback_stages: list[str]
    spans: list[dict[str, Any]]


_FINISHED_TURNS = """
    SELECT id, tenant_id, topology, status, next_agent, kb_information_level, accepted_at,
           completed_at, agent_fallback
    FROM turns WHERE id = ANY(%(ids)s)
"""
_THEIR_SPANS = """
    SELECT turn_id, stage, queue, attempt, outcome, pid, started_at, finished_at
    FROM turn_spans WHERE turn_id = ANY(%(ids)s)
"""


def read_finished_turns(turn_ids: Iterable[str]) -> list[FinishedTurn]:
    """The turns and their spans, in two plain queries (one round trip)."""
    from psycopg.rows import namedtuple_row

    from shared.db.direct import direct_connection

    ids = [uuid.UUID(t) for t in dict.fromkeys(turn_ids)]
    if not ids:
        return []
    with direct_connection() as conn:
        turns_cursor = conn.cursor(row_factory=namedtuple_row)
        spans_cursor = conn.cursor(row_factory=namedtuple_row)
        with conn.pipeline():
            turns_cursor.execute(_FINISHED_TURNS, {"ids": ids})
            spans_cursor.execute(_THEIR_SPANS, {"ids": ids})
        turns: list[Any] = turns_cursor.fetchall()
        spans: list[Any] = spans_cursor.fetchall()
    by_turn: dict[uuid.UUID, list[Any]] = {}
    for span in spans:
        by_turn.setdefault(span.turn_id, []).append(span)
    return [
        FinishedTurn(
            turn_id=str(t.id),
            tenant_id=t.tenant_id,
            topology=t.topology,
            status=t.status,
            agent=t.next_agent,
            kb_information_level=t.kb_information_level,
            latency_s=None if t.completed_at is None else t.completed_at - t.accepted_at,
            agent_fallback=bool(t.agent_fallback),
            fallback_stages=sorted(
                {s.stage for s in by_turn.get(t.id, []) if s.outcome == "fallback"}
            ),
            spans=[
                {
                    "stage": s.stage,
                    "queue": s.queue,
                    "attempt": s.attempt,
                    "pid": s.pid,
                    "duration_ms": round((s.finished_at - s.started_at) * 1000, 1),
                }
                for s in by_turn.get(t.id, [])
            ],
        )
        for t in turns
    ]


def observe_turn(turn: FinishedTurn) -> None:
    metrics = instruments()
    metrics.turns.labels(turn.status).inc()
    if turn.latency_s is not None:
        metrics.turn_seconds.labels(turn.topology, turn.agent or "none").observe(turn.latency_s)
    if turn.kb_information_level:
        metrics.kb_levels.labels(turn.kb_information_level).inc()
    for stage in turn.fallback_stages:
        metrics.fallbacks.labels(stage).inc()
    if turn.agent_fallback and "agent" not in turn.fallback_stages:
        metrics.fallbacks.labels("agent").inc()
    _log_turn(turn)


def _log_turn(turn: FinishedTurn) -> None:
    """One line per stage and one per turn, with every stable key, tenant included."""
    for span in turn.spans:
        log.info(
            "stage recorded",
            extra={
                "action": "stage_recorded",
                "turn_id": turn.turn_id,
                "tenant_id": turn.tenant_id,
                "stage": span["stage"],
                "queue": span["queue"],
                "attempt": span["attempt"],
                "pid": span["pid"],
                "duration_ms": span["duration_ms"],
            },
        )
    log.info(
        "turn ended",
        extra={
            "action": "turn_ended",
            "turn_id": turn.turn_id,
            "tenant_id": turn.tenant_id,
            "stage": "agent",
            "agent": turn.agent,
            "kb_information_level": turn.kb_information_level,
            "duration_ms": None if turn.latency_s is None else round(turn.latency_s * 1000, 1),
            "reason": turn.status,
        },
    )


class TurnRecorder:
    """Observes finished turns off the task's thread: a bounded queue and one daemon thread."""

    def __init__(self, *, capacity: int = 10_000, batch: int = 200, linger_s: float = 0.5):
        self._queue: queue.Queue[str] = queue.Queue(maxsize=capacity)
        self._batch = batch
        self._linger_s = linger_s
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def turn_finished(self, turn_id: str) -> None:
        """Called on the hot path: never blocks."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(turn_id)
        except queue.Full:
            instruments().dropped.inc()

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="chordline-turn-metrics", daemon=True
                )
                self._pid = os.getpid()
                self._thread.start()

    def _next_batch(self) -> list[str]:
        """Wait for a first id, then take more for at most ``linger_s`` in all (one deadline
        per batch, not per id: a steady trickle must not hold a batch open until it fills)."""
        ids = [self._queue.get()]
        deadline = time.monotonic() + self._linger_s
        with contextlib.suppress(queue.Empty):
            while len(ids) < self._batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ids.append(self._queue.get(timeout=left))
        return ids

    def _run(self) -> None:
        while True:
            ids = self._next_batch()
            try:
                for turn in read_finished_turns(ids):
                    observe_turn(turn)
                    # Give the GIL away between turns: a batch takes milliseconds, which the
                    # worker's consumer and its tasks would otherwise wait out.
                    time.sleep(0)
            except Exception:  # a metrics failure must never take the worker down
                log.warning(
                    "could not observe finished turns",
                    exc_info=True,
                    extra={"action": "metrics_failed"},
                )


# --------------------------------------------------------------------------- serving


@dataclass
class Exporter:
    host: str
    port: int
    multiprocess_dir: Path | None
    target_file: Path | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        if self.target_file is not None:
            self.target_file.unlink(missing_ok=True)
        if self.multiprocess_dir is not None:
            shutil.rmtree(self.multiprocess_dir, ignore_errors=True)


def use_multiprocess_mode() -> Path | None:
    """For prefork pools: children record into files that the parent's exporter sums.

    Runs in the parent before the pool forks and before any chordline metric exists. The
    ``celery`` command has usually imported prometheus_client already (Flower's command
    plugin does), so the value class it chose at import, from PROMETHEUS_MULTIPROC_DIR, is
    set again here, as its import would have set it.
    """
    from prometheus_client import values

    created = None
    if not os.environ.get(MULTIPROC_ENV):
        created = Path(tempfile.mkdtemp(prefix="chordline-metrics-"))
        os.environ[MULTIPROC_ENV] = str(created)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return created


def _registry(multiprocess: bool) -> Any:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client import multiprocess as mp

    if not multiprocess:
        return REGISTRY
    registry = CollectorRegistry()
    mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def _bind(host: str, ports: Iterable[int], registry: Any) -> int:
    from prometheus_client import start_http_server

    for port in ports:
        try:
            server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError:
            continue
        return int(server.server_address[1])
    raise OSError(f"no free metrics port on {host}")


def start_exporter(*, nodename: str, prefork: bool) -> Exporter | None:
    """Serve this worker's metrics on a private port; record it for scrapers to find."""
    from shared.config import get_settings

    settings = get_settings()
    config = settings.metrics
    if not config.enabled:
        return None
    multiprocess_dir = use_multiprocess_mode() if prefork else None
    instruments()
    ports = (
        [config.port]
        if config.port
        else range(config.port_base, config.port_base + config.port_span)
    )
    try:
        port = _bind(config.host, ports, _registry(bool(os.environ.get(MULTIPROC_ENV))))
    except OSError as exc:
        log.warning(str(exc), extra={"action": "metrics_not_served"})
        return None
    exporter = Exporter(config.host, port, multiprocess_dir, None)
    exporter.target_file = write_scrape_target(
        settings.data_dir / "metrics", nodename=nodename, address=f"{config.host}:{port}"
    )
    log.info(
        "serving metrics",
        extra={"action": "metrics_serving", "server": nodename, "port": port},
    )
    return exporter


def write_scrape_target(directory: Path, *, nodename: str, address: str) -> Path | None:
    """A Prometheus file_sd target per worker process, so a scraper on this host finds it.

    One file per process (``<worker>-<pid>.json``): another process of the same name (a
    `chordline demo` beside `chordline up`) neither overwrites it nor, when it exits,
    removes it. Files of processes that died without removing theirs (SIGKILL) go when a
    process of the same name writes its own."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        stem = nodename.replace("/", "_")
        _forget_dead_targets(directory, stem)
        path = directory / f"{stem}-{os.getpid()}.json"
        process_type = nodename.split("@", 1)[0]
        entry = [{"targets": [address], "labels": {"worker": nodename, "process": process_type}}]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)
        return path
    except OSError:
        return None


def _forget_dead_targets(directory: Path, stem: str) -> None:
    (directory / f"{stem}.json").unlink(missing_ok=True)  # the earlier file-per-name form
    for path in directory.glob(f"{stem}-*.json"):
        pid = path.stem.removeprefix(f"{stem}-")
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def scrape_targets(directory: Path) -> dict[str, str]:
    """worker name → metrics URL, from the files the running workers wrote."""
    found: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            entry = json.loads(path.read_text())[0]
            found[entry["labels"]["worker"]] = f"http://{entry['targets'][0]}/metrics"
    return found


def mark_child_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
