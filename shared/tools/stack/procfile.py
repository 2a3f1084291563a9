"""The Procfile is the one list of process types; the demo, the benchmark and the tests
start their workers from it, so what runs locally is what runs in production."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import redis

from shared.tools.stack.processes import PROJECT_ROOT, ProcessGroup

PROCFILE = PROJECT_ROOT / "Procfile"
TURN_PROCESSES = ("orchestrator", "researcher", "merge", "agents")


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        entries[name.strip()] = command.strip()
    return entries


def start_workers(
    names: tuple[str, ...] | list[str],
    *,
    env: dict[str, str],
    log_dir: Path | None,
    commands: dict[str, str] | None = None,
) -> ProcessGroup:
    """Start the named Procfile entries (or, given ``commands``, those commands by name)."""
    entries = commands if commands is not None else read_procfile()
    group = ProcessGroup(log_dir=log_dir)
    try:
        for name in names:
            group.start(name, entries[name], env=env)
    except BaseException:
        group.stop_all()
        raise
    return group


BROKER_CONNECTION_ERRORS = (kombu.exceptions.OperationalError, redis.ConnectionError, OSError)


def wait_for_workers(
    names: tuple[str, ...] | list[str], *, app_ping: object, timeout_s: float = 60.0
) -> None:
    """Block until every named worker answers a ping. A broker connection that breaks while
    waiting (Redis restarting; a pooled connection that outlived its server) is no answer
    yet: the next ping tries again, until the timeout."""
    assert callable(app_ping)
    deadline = time.monotonic() + timeout_s
    wanted = set(names)
    broken: Exception | None = None
    while time.monotonic() < deadline:
        try:
            replies = app_ping() or []
        except BROKER_CONNECTION_ERRORS as exc:
            broken, replies = exc, []
        answered = {name.split("@", 1)[0] for reply in replies for name in reply}
        if wanted <= answered:
            return
        time.sleep(0.3)
    why = f" (last broker error: {type(broken).__name__}: {broken})" if broken else ""
    raise TimeoutError(f"workers {sorted(wanted)} did not all answer within {timeout_s:.0f} s{why}")


@contextlib.contextmanager
def running_workers(
    names: tuple[str, ...] | list[str],
    *,
    env_overrides: dict[str, str] | None = None,
    log_dir: Path | None = None,
    timeout_s: float = 60.0,
    commands: dict[str, str] | None = None,
) -> Iterator[ProcessGroup]:
    """Start Procfile workers (or ``commands``) against the current DATABASE_URL/REDIS_URL;
    stop them after."""
    from shared.dispatch import dispatch_app

    env = {**os.environ, **(env_overrides or {})}
    group = start_workers(names, env=env, log_dir=log_dir, commands=commands)
    try:
        wait_for_workers(
            names, app_ping=lambda: dispatch_app().control.ping(timeout=0.5), timeout_s=timeout_s
        )
        yield group
    finally:
        group.stop_all()


def workers_answering(names: tuple[str, ...] | list[str]) -> bool:
    """True when a worker for every named queue already answers (e.g. under `chordline up`)."""
    from shared.dispatch import dispatch_app

    try:
        replies = dispatch_app().control.ping(timeout=0.5) or []
    except Exception:
        return False
    answered = {name.split("@", 1)[0] for reply in replies for name in reply}
    return set(names) <= answered
