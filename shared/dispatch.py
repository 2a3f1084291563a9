"""Publishing turns to the broker, after their rows are committed.

``enqueue_turn`` commits the turn and its outbox row, hands the id to this process's
dispatcher thread, and returns: the caller never waits for the broker. The thread publishes
the turn's workflow and marks the outbox rows as dispatched, in batches. If the process dies
first, or Redis is down, the rows stay undispatched and the relay (a periodic maintenance
task) publishes them. Stages are idempotent, so a turn published twice runs once.

This is the one narrow place where ``shared/`` reaches the Celery app: workers hand theirs
in with ``set_dispatch_app``; a client process builds a producer-only app from settings.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import kombu.exceptions
import redis
from celery import Celery

from shared.config import get_settings
from shared.contract import agent_signature, make_celery, turn_workflow
from shared.db.outbox import mark_dispatched
from shared.db.session import session_scope
from shared.errors import BrokerUnavailable
from shared.schemas import Agent, Topology

log = logging.getLogger(__name__)

_app: Celery | None = None
_client_app_pid: int | None = None  # set when this module built the app (a client process)
_app_lock = threading.Lock()


def set_dispatch_app(app: Celery) -> None:
    global _app, _client_app_pid
    _app, _client_app_pid = app, None


def dispatch_app() -> Celery:
    """The worker's app, or a producer-only app made once per client process: a client
    forked after publishing must not share its parent's broker connections."""
    global _app, _client_app_pid
    with _app_lock:
        if _app is None or (_client_app_pid is not None and _client_app_pid != os.getpid()):
            _app = make_celery("chordline-client", get_settings())
            _client_app_pid = os.getpid()
        return _app


def reset_dispatch_app() -> None:
    global _app
    _app = None


@contextmanager
def _broker_failures(what: str, turn_id: str) -> Iterator[None]:
    """A publish that failed after its own retries is a transient error: the caller's task
    retries, or the outbox relay publishes the turn later."""
    try:
        yield
    except (kombu.exceptions.OperationalError, redis.RedisError) as exc:
        raise BrokerUnavailable(
            f"could not publish the {what} of turn {turn_id}: {type(exc).__name__}: {exc}"
        ) from exc


def publish_turn(turn_id: str, topology: str) -> None:
    """Publish the turn's workflow now (BrokerUnavailable if the broker cannot be reached)."""
    with _broker_failures("workflow", turn_id):
        turn_workflow(dispatch_app(), turn_id=turn_id, topology=Topology(topology)).apply_async()


def publish_agent(turn_id: str, agent: Agent, *, retrieve: bool) -> None:
    with _broker_failures(f"{agent.value} agent", turn_id):
        signature = agent_signature(dispatch_app(), turn_id=turn_id, agent=agent, retrieve=retrieve)
        signature.apply_async()


@dataclass(frozen=True)
class _Intent:
    turn_id: str
    topology: str


class Dispatcher:
    """A background thread that publishes committed turns and marks their outbox rows."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Intent] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="chordline-dispatcher", daemon=True)
        self._thread.start()

    def submit(self, turn_id: str, topology: str) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(_Intent(turn_id, topology))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far is published (or failed to be)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._publish(batch)
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _publish(self, batch: list[_Intent]) -> None:
        sent: list[str] = []
        for intent in batch:
            try:
                publish_turn(intent.turn_id, intent.topology)
                sent.append(intent.turn_id)
            except Exception as exc:  # the relay will publish it from the outbox
                log.warning(
                    "dispatch failed; the outbox relay will retry",
                    extra={
                        "action": "dispatch_failed",
                        "turn_id": intent.turn_id,
                        "reason": type(exc).__name__,
                    },
                )
        try:
            with session_scope() as session:
                mark_dispatched(session, sent)
        except Exception as exc:  # unmarked rows are re-sent by the relay: a harmless duplicate
            log.warning(
                "could not mark outbox rows dispatched",
                extra={"action": "outbox_mark_failed", "reason": type(exc).__name__},
            )


_dispatcher: Dispatcher | None = None
_dispatcher_pid: int | None = None
_dispatcher_lock = threading.Lock()


def get_dispatcher() -> Dispatcher:
    global _dispatcher, _dispatcher_pid
    with _dispatcher_lock:
        if _dispatcher is None or _dispatcher_pid != os.getpid():
            _dispatcher = Dispatcher()
            _dispatcher_pid = os.getpid()
            atexit.register(_dispatcher.flush, 5.0)
        return _dispatcher


def dispatch_committed(turn_ids_and_topologies: list[tuple[str, str]]) -> None:
    """Hand committed turns to this process's dispatcher thread."""
    dispatcher = get_dispatcher()
    for turn_id, topology in turn_ids_and_topologies:
        dispatcher.submit(turn_id, topology)


def flush_dispatch(timeout_s: float = 10.0) -> bool:
    return get_dispatcher().flush(timeout_s) if _dispatcher is not None else True


def publish_now(turn_id: str, topology: str) -> None:
    """Publish synchronously and mark the outbox row: for relays and workers."""
    publish_turn(turn_id, topology)
    with session_scope() as session:
        mark_dispatched(session, [turn_id])
