"""Test-only fault hooks: a marker in a turn's message makes its worker misbehave on purpose.

The fault-injection suite needs a task to kill its own process, hang, or see a rate limit at
an exact point. Production never runs any of it:

- this module is imported only when a worker *starts* with ``CHORDLINE_FAULT_MARKER`` set
  (``workers/base.py`` checks the variable once, when it is imported): only then is the
  stage runner wrapped and, at ``worker_init``, the stages' writes; a worker started without
  it loads none of this and runs its stages unwrapped;
- the suite draws a random token per run (at least 16 characters), and a worker refuses to
  start with the variable set when ``CHORDLINE_ENV=production``;
- a message triggers a fault only if it contains that exact token, followed by the fault.

Faults, written ``<token>:<fault>:<stage>[:<seconds>]`` anywhere in the message; ``<stage>`` is
``orchestrator``, ``researcher``, ``merge`` or ``agent``:

``poison``       SIGKILL this process when the stage starts, on every delivery (a poison pill);
``crash``        once: SIGKILL this process right after the stage's write committed, before
                 anything that follows it (for the merge: before its agent is published; for
                 a header stage: before the chord hears of it). The stages before the agent
                 write their output in one autocommit statement (``commit_stage_output``):
                 there is no moment between that write and its commit, so this is the first
                 moment a crash can strand a turn. ``orchestrator``, ``researcher`` and
                 ``merge`` only;
``hang``         once: record this process's pid in Redis, then sleep ``seconds``;
``ratelimit``    once: the model provider answers 429 with a Retry-After of ``seconds``.

"Once" is once per turn and stage, counted in Redis, so a re-delivery or a re-drive of the
same stage runs normally. The counters (``count_key``) are how the suite checks that a fault
fired: ``poison`` counts each kill, ``crash`` each committed write it saw armed (it kills on
the first), ``hang`` and ``ratelimit`` each start of the stage with the fault armed.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from celery import signals
from sqlalchemy import select

from shared.config import get_settings
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.errors import ProviderError
from shared.redis_conn import get_redis

log = logging.getLogger(__name__)

MARKER_ENV = "CHORDLINE_FAULT_MARKER"
MIN_MARKER_CHARS = 16
KEY_TTL_S = 3600
# The stages whose output is one statement through the turn store's write_output.
CRASH_STAGES = ("orchestrator", "researcher", "merge")

_marker: str | None = None
_writes_wrapped = False
_pending = threading.local()  # the turn and the stages a crash is armed for, in this thread

StageRunner = TypeVar("StageRunner", bound=Callable[..., Any])


class InjectedRateLimit(ProviderError):
    """The model provider answered 429 Too Many Requests (injected by a fault hook)."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"provider rate limit: 429, Retry-After {retry_after_s:g} s (injected)")


@dataclass(frozen=True)
class Fault:
    kind: str
    stage: str
    seconds: float


def installed(run_turn_stage: StageRunner) -> StageRunner:
    """The stage runner with the hooks around each stage it runs; arms them at worker start.

    Called by ``workers/base.py`` only when the worker starts with ``CHORDLINE_FAULT_MARKER``
    set. The hooks do nothing until ``install_from_env`` has read the marker (worker_init).
    """
    signals.worker_init.connect(_arm_at_worker_start, weak=False)

    @functools.wraps(run_turn_stage)
    def run_with_fault_hooks(task: Any, payload: dict[str, Any], stage: Any) -> Any:
        return run_turn_stage(task, payload, _with_hooks(task.name, stage))

    return cast(StageRunner, run_with_fault_hooks)


def _arm_at_worker_start(**_: Any) -> None:
    install_from_env()


def install_from_env() -> None:
    """Read the marker once, at worker start. Refuses to arm in production."""
    global _marker
    marker = os.environ.get(MARKER_ENV, "")
    if not marker:
        return
    if get_settings().environment == "production":
        raise SystemExit(f"{MARKER_ENV} is set; fault hooks are never armed in production")
    if len(marker) < MIN_MARKER_CHARS:
        raise SystemExit(f"{MARKER_ENV} must be at least {MIN_MARKER_CHARS} characters")
    _wrap_stage_writes()
    _marker = marker
    log.warning("fault hooks armed", extra={"action": "fault_hooks_armed"})


def _wrap_stage_writes() -> None:
    """Wrap the one function every stage before the agent writes its output through.

    ``PostgresTurnStore.write_output`` (shared/turn/store.py) looks ``write_stage_output``
    up in its module when it runs, so wrapping that name reaches every such write. A
    renamed or moved function fails the worker's start here, loudly, instead of leaving
    the ``crash`` fault silently unfired.
    """
    from shared.turn import store as store_module

    global _writes_wrapped
    write = getattr(store_module, "write_stage_output", None)
    if not callable(write):
        raise SystemExit("fault hooks: shared.turn.store.write_stage_output is gone")
    if _writes_wrapped:
        return

    @functools.wraps(write)
    def write_then_maybe_crash(*args: Any, **kwargs: Any) -> Any:
        written = write(*args, **kwargs)
        if written:
            _crash_after_commit(str(kwargs.get("turn_id")), str(kwargs.get("stage")))
        return written

    store_module.write_stage_output = write_then_maybe_crash  # type: ignore[attr-defined]
    _writes_wrapped = True


def faults_in(message: str) -> list[Fault]:
    if _marker is None:
        return []
    pattern = re.escape(_marker) + r":(poison|crash|hang|ratelimit):([a-z]+)(?::([0-9.]+))?"
    return [
        Fault(kind, stage, float(seconds or 0))
        for kind, stage, seconds in re.findall(pattern, message)
    ]


def stage_of(task_name: str) -> str:
    return "agent" if ".agent." in task_name else task_name.rsplit(".", 1)[-1]


def count_key(kind: str, turn_id: str, stage: str) -> str:
    """The Redis counter of a fault for one turn and stage (see the module's docstring)."""
    return f"chordline:fault:{kind}:{turn_id}:{stage}"


def pid_key(turn_id: str, stage: str) -> str:
    """The pid of the process a ``hang`` stopped or a ``crash`` killed."""
    return f"chordline:fault:pid:{turn_id}:{stage}"


def _count(kind: str, turn_id: str, stage: str) -> int:
    key = count_key(kind, turn_id, stage)
    pipe = get_redis().pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, KEY_TTL_S)
    count, _ = pipe.execute()
    return int(count)


def _with_hooks(task_name: str, stage: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """The stage, with the faults its turn's message asks for around it."""

    def stage_with_faults(ref: Any, origin: Any) -> Any:
        if _marker is None:
            return stage(ref, origin)
        before_stage(task_name=task_name, turn_id=ref.turn_id)
        try:
            return stage(ref, origin)
        finally:
            after_stage()

    return stage_with_faults


def before_stage(*, task_name: str, turn_id: str) -> None:
    """Run before each turn stage of an armed worker: trigger what the message asks for."""
    with session_scope() as session:
        message = session.scalar(select(Turn.message).where(Turn.id == uuid.UUID(turn_id)))
    faults = faults_in(message or "")
    # A crash waits for the write: armed for every stage named, since a task may write more
    # than its own stage's output (a sequential turn's orchestrator also routes it).
    _pending.turn_id = turn_id
    _pending.crash = frozenset(f.stage for f in faults if f.kind == "crash")
    stage = stage_of(task_name)
    for fault in faults:
        if fault.stage == stage:
            _trigger(fault, turn_id=turn_id)


def after_stage() -> None:
    """Forget the crashes armed for a stage whose write never committed."""
    _pending.crash = frozenset()


def _trigger(fault: Fault, *, turn_id: str) -> None:
    if fault.kind == "poison":
        _count(fault.kind, turn_id, fault.stage)
        _die(turn_id, fault)
    if fault.kind == "crash" or _count(fault.kind, turn_id, fault.stage) != 1:
        return
    if fault.kind == "hang":
        get_redis().set(pid_key(turn_id, fault.stage), os.getpid(), ex=KEY_TTL_S)
        time.sleep(fault.seconds)
    elif fault.kind == "ratelimit":
        raise InjectedRateLimit(fault.seconds)


def _crash_after_commit(turn_id: str, stage: str) -> None:
    """The stage's write just committed: SIGKILL this process, the first time only."""
    armed: frozenset[str] = getattr(_pending, "crash", frozenset())
    if getattr(_pending, "turn_id", None) != turn_id or stage not in armed:
        return
    if _count("crash", turn_id, stage) != 1:
        return
    get_redis().set(pid_key(turn_id, stage), os.getpid(), ex=KEY_TTL_S)
    _die(turn_id, Fault("crash", stage, 0))


def _die(turn_id: str, fault: Fault) -> None:
    log.warning(
        f"fault hook kills this process ({fault.kind})",
        extra={
            "action": "fault_kill",
            "turn_id": turn_id,
            "stage": fault.stage,
            "reason": fault.kind,
            "pid": os.getpid(),
        },
    )
    os.kill(os.getpid(), signal.SIGKILL)
