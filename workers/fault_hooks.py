"""Test-only fault hooks: a marker in a turn's message makes its worker misbehave on purpose.

The fault-injection suite needs a task to kill its own process, hang, or see a rate limit at
an exact point. Production cannot trigger any of it by accident:

- the hooks are off unless the worker *starts* with ``CHORDLINE_FAULT_MARKER`` set to a token
  (the suite draws a random one per run, at least 16 characters);
- a worker refuses to start with the variable set when ``CHORDLINE_ENV=production``;
- a message triggers a fault only if it contains that exact token, followed by the fault.

Faults, written ``<token>:<fault>:<stage>[:<seconds>]`` anywhere in the message; ``<stage>`` is
``orchestrator``, ``researcher``, ``merge`` or ``agent``:

``poison``       SIGKILL this process when the stage starts, on every delivery (a poison pill);
``crash``        SIGKILL this process between the stage's write and its commit, once;
``hang``         once: record this process's pid in Redis, then sleep ``seconds``;
``ratelimit``    once: the model provider answers 429 with a Retry-After of ``seconds``.

"Once" is once per turn and stage, counted in Redis, so a re-delivery or a re-drive of the
same stage runs normally.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event, select

from shared.config import get_settings
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.errors import ProviderError
from shared.redis_conn import get_redis
from shared.schemas import Stage
from shared.turn_state import STAGE_OUTPUT

log = logging.getLogger(__name__)

MARKER_ENV = "CHORDLINE_FAULT_MARKER"
MIN_MARKER_CHARS = 16
KEY_TTL_S = 3600

_marker: str | None = None
_pending_crash = threading.local()


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
    _marker = marker
    event.listen(Engine, "after_cursor_execute", _note_stage_write)
    event.listen(Engine, "commit", _crash_before_commit)
    log.warning("fault hooks armed", extra={"action": "fault_hooks_armed"})


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


def _first_time(turn_id: str, fault: Fault) -> bool:
    key = f"chordline:fault:{fault.kind}:{turn_id}:{fault.stage}"
    return int(get_redis().incr(key)) == 1 and bool(get_redis().expire(key, KEY_TTL_S))


def pid_key(turn_id: str, stage: str) -> str:
    return f"chordline:fault:pid:{turn_id}:{stage}"


def before_stage(*, task_name: str, turn_id: str) -> None:
    """Called by every turn stage before it runs; does nothing unless armed and marked."""
    if _marker is None:
        return
    with session_scope() as session:
        message = session.scalar(select(Turn.message).where(Turn.id == uuid.UUID(turn_id)))
    stage = stage_of(task_name)
    for fault in faults_in(message or ""):
        if fault.stage == stage:
            _trigger(fault, turn_id=turn_id)


def _trigger(fault: Fault, *, turn_id: str) -> None:
    if fault.kind == "poison":
        _die(turn_id, fault)
    if not _first_time(turn_id, fault):
        return
    if fault.kind == "crash":
        _pending_crash.turn_id = turn_id
        # the column the stage's write sets: a commit whose transaction set it is the stage's
        _pending_crash.column = STAGE_OUTPUT[Stage(fault.stage)]
    elif fault.kind == "hang":
        get_redis().set(pid_key(turn_id, fault.stage), os.getpid(), ex=KEY_TTL_S)
        time.sleep(fault.seconds)
    elif fault.kind == "ratelimit":
        raise InjectedRateLimit(fault.seconds)


def _die(turn_id: str, fault: Fault) -> None:
    log.warning(
        "fault hook kills this process",
        extra={"action": "fault_kill", "turn_id": turn_id, "stage": fault.stage},
    )
    os.kill(os.getpid(), signal.SIGKILL)


def _note_stage_write(
    conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
) -> None:
    column = getattr(_pending_crash, "column", None)
    if column and "UPDATE TURNS" in statement.upper() and column in statement:
        conn.info["chordline_fault_write"] = True


def _crash_before_commit(conn: Any) -> None:
    if conn.info.pop("chordline_fault_write", False):
        turn_id = getattr(_pending_crash, "turn_id", "")
        _pending_crash.column = None
        _die(turn_id, Fault("crash", "commit", 0))


def after_stage() -> None:
    """Forget a crash armed for a stage whose write never reached a commit."""
    if _marker is not None:
        _pending_crash.column = None
