"""Publishing turns to the broker, after their rows are committed.

``enqueue_turn`` commits the turn and its outbox row, hands the id to this process's
dispatcher thread, and returns: the caller never waits for the broker. The thread publishes
the turn's workflow and marks the outbox rows as dispatched, in batches. If the process dies
first, or Redis is down, the rows stay undispatched and the relay (a periodic maintenance
task) publishes them. Stages are idempotent, so a turn published twice runs once.

Every publish of a committed turn goes through ``publish_committed`` (publish, then mark
the rows of the turns sent): the dispatcher thread, the relay, the sweeper's hand-over,
admission's release of held turns, and an agent starting its conversation's next turn.

This is the one narrow place where ``shared/`` reaches the Celery app: workers hand theirs
in with ``set_dispatch_app``; a client process builds a producer-only app from settings,
one per process (a resource of its runtime, shared/runtime.py).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import kombu.exceptions
import redis
from celery import Celery
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.contract import (
    AGENT_TASKS,
    MERGE_TASK,
    ORCHESTRATOR_TASK,
    RESEARCHER_TASK,
    make_celery,
    merge_signature,
    payload_of,
    turn_workflow,
)
from shared.db.direct import direct_connection
from shared.db.outbox import PendingDispatch, mark_dispatched
from shared.errors import BrokerUnavailable
from shared.runtime import Resource, runtime
from shared.schemas import Agent, Topology
from shared.task_messages import merge_chord, push, task_message

log = logging.getLogger(__name__)


def set_dispatch_app(app: Celery) -> None:
    """A worker publishes with its own app (a prefork pool's child, with a runtime of its
    own, makes a producer app from the same settings)."""
    runtime().install(DISPATCH_APP, app)


DISPATCH_APP = Resource("celery app", make=lambda: make_celery("chordline-client", get_settings()))


def dispatch_app() -> Celery:
    """The worker's app, or a producer-only app made from settings once per client process
    (a client forked after publishing must not share its parent's broker connections: a
    child makes its own)."""
    return runtime().get(DISPATCH_APP)


def reset_dispatch_app() -> None:
    runtime().discard(DISPATCH_APP)


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
        app, shape = dispatch_app(), Topology(topology)
        if shape is Topology.PARALLEL:
            _publish_chord(app, turn_id)
        else:
            turn_workflow(app, turn_id=turn_id, topology=shape).apply_async()


def _publish_chord(app: Celery, turn_id: str) -> None:
    """The parallel turn's chord, as ``turn_workflow``'s canvas publishes it (the chord's size,
    then the orchestrator and the researcher, each carrying the merge), in one round trip."""
    ref = payload_of(MERGE_TASK, turn_id=turn_id)
    group_id, merge_id = str(uuid.uuid4()), str(uuid.uuid4())
    merge = merge_chord(app, ref, merge_id=merge_id, group_id=group_id)
    header = [
        task_message(app, name, ref, group_id=group_id, group_index=index, chord=merge)
        for index, name in enumerate((ORCHESTRATOR_TASK, RESEARCHER_TASK))
    ]
    backend = cast(Any, app.backend)  # chordline's (shared/result_backend.py)
    push(
        app,
        backend.client,
        header,
        before=lambda pipe: backend.add_chord_size(pipe, group_id, len(header)),
    )


def publish_agent(turn_id: str, agent: Agent, *, retrieve: bool) -> None:
    with _broker_failures(f"{agent.value} agent", turn_id):
        name = AGENT_TASKS[agent]
        app = dispatch_app()
        message = task_message(app, name, payload_of(name, turn_id=turn_id, retrieve=retrieve))
        push(app, cast(Any, app.backend).client, [message])


def publish_merge(turn_id: str) -> None:
    """The merge alone, outside any chord (a re-drive once both header outputs are durable)."""
    with _broker_failures("merge", turn_id):
        merge_signature(dispatch_app(), turn_id=turn_id).apply_async()


MarkSent = Session | Callable[[list[str]], None] | None


def publish_committed(
    turns: Iterable[tuple[str, str]], *, mark: MarkSent = None, stop_at_outage: bool = False
) -> list[str]:
    """Publish the workflows of committed turns, (turn id, topology) each, then mark the
    outbox rows of those sent as dispatched. Returns the turns sent.

    A turn that cannot be published is logged and left undispatched: the outbox relay sends
    it later. ``stop_at_outage`` ends the pass at the first BrokerUnavailable (the rest would
    fail too); otherwise one bad turn never holds back the ones behind it.

    Where the rows are marked, ``mark``: None, at once on a direct connection (a failure is
    logged: an unmarked row only costs a duplicate publish by the relay, which the stages
    absorb); a Session, in its transaction (the relay marks what it claimed in the
    transaction holding the claim); a callable, handed the ids sent (the dispatcher
    thread, which marks its batches after a linger, with ``mark_sent``).
    """
    sent: list[str] = []
    for turn_id, topology in turns:
        try:
            publish_turn(turn_id, topology)
        except Exception as exc:
            log.warning(
                "publish failed; the outbox relay will retry",
                extra={
                    "action": "dispatch_failed",
                    "turn_id": turn_id,
                    "reason": type(exc).__name__,
                },
            )
            if stop_at_outage and isinstance(exc, BrokerUnavailable):
                break
            continue
        sent.append(turn_id)
    if not sent:
        return sent
    if mark is None:
        mark_sent(sent)
    elif isinstance(mark, Session):
        mark_dispatched(mark, sent)
    else:
        mark(sent)
    return sent


def mark_sent(turn_ids: Sequence[str]) -> None:
    """Mark these turns' outbox rows dispatched on a direct connection of their own."""
    try:
        with direct_connection() as conn:
            mark_dispatched(conn, turn_ids)
    except Exception as exc:  # unmarked rows are re-sent by the relay: a harmless duplicate
        log.warning(
            "could not mark outbox rows dispatched",
            extra={"action": "outbox_mark_failed", "reason": type(exc).__name__},
        )


_WAKE = PendingDispatch("", "")  # no turn: wakes the thread to mark what it has published


class Dispatcher:
    """A background thread that publishes committed turns and marks their outbox rows.

    Publishing is at once; marking rows dispatched (which only spares the relay a harmless
    duplicate publish, seconds later) waits up to ``MARK_LINGER_S`` so that one UPDATE
    marks every turn published meanwhile, not one UPDATE per turn.
    """

    MARK_LINGER_S = 0.2

    def __init__(self) -> None:
        self._queue: queue.Queue[PendingDispatch] = queue.Queue()
        self._pending = 0  # submitted, and not yet published and marked (or failed)
        self._idle = threading.Condition()
        self._flush_wanted = threading.Event()
        self._unmarked: list[str] = []
        self._oldest_unmarked = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="chordline-dispatcher", daemon=True)
        self._thread.start()

    def submit(self, turn_id: str, topology: str) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(PendingDispatch(turn_id, topology))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far is published and marked (or failed)."""
        self._flush_wanted.set()
        self._queue.put(_WAKE)
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush, then end the thread (what is submitted after this is the relay's)."""
        self.flush(timeout_s)
        self._closed = True
        self._queue.put(_WAKE)
        self._thread.join(timeout_s)

    def _next_batch(self) -> list[PendingDispatch]:
        timeout = None
        if self._unmarked:
            timeout = max(0.0, self._oldest_unmarked + self.MARK_LINGER_S - time.monotonic())
        try:
            batch = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return [intent for intent in batch if intent is not _WAKE]

    def _run(self) -> None:
        while not self._closed:
            batch = self._next_batch()
            sent = publish_committed(batch, mark=self._mark_later)
            self._done(len(batch) - len(sent))  # failures: the relay has them
            due = time.monotonic() >= self._oldest_unmarked + self.MARK_LINGER_S
            if self._unmarked and (due or self._flush_wanted.is_set()):
                marked, self._unmarked = self._unmarked, []
                mark_sent(marked)
                self._done(len(marked))
            if self._queue.empty() and not self._unmarked:
                self._flush_wanted.clear()

    def _mark_later(self, sent: list[str]) -> None:
        if not self._unmarked:
            self._oldest_unmarked = time.monotonic()
        self._unmarked.extend(sent)

    def _done(self, count: int) -> None:
        if count:
            with self._idle:
                self._pending -= count
                self._idle.notify_all()


def _start_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher()
    atexit.register(dispatcher.flush, 5.0)  # what a client committed goes out before it exits
    return dispatcher


def _close_dispatcher(dispatcher: Dispatcher) -> None:
    atexit.unregister(dispatcher.flush)
    dispatcher.close()


DISPATCHER = Resource("dispatcher thread", make=_start_dispatcher, close=_close_dispatcher)


def get_dispatcher() -> Dispatcher:
    return runtime().get(DISPATCHER)


def dispatch_committed(turn_ids_and_topologies: list[tuple[str, str]]) -> None:
    """Hand committed turns to this process's dispatcher thread."""
    dispatcher = get_dispatcher()
    for turn_id, topology in turn_ids_and_topologies:
        dispatcher.submit(turn_id, topology)


def flush_dispatch(timeout_s: float = 10.0) -> bool:
    dispatcher = runtime().peek(DISPATCHER)
    return dispatcher.flush(timeout_s) if dispatcher is not None else True
