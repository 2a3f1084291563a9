"""The Procfile is the one list of process types; the demo, the benchmark and the tests
start their workers from it, so what runs locally is what runs in production."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
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


def process_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for a Procfile command: this interpreter's tools first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"}


@dataclass
class ProcessGroup:
    """Worker processes started from the Procfile; stopped by their own PIDs."""

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path | None = None

    def start(self, name: str, command: str, *, env: dict[str, str]) -> subprocess.Popen[bytes]:
        out: int | object = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        # Through the shell, as Procfile runners do, so ${VAR:-default} works;
        # "exec" makes the PID we hold the worker's own.
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=PROJECT_ROOT,
            env=process_env(env),
            stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        deadline = time.monotonic() + timeout_s
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: its pool children too
                proc.wait()
        self.processes.clear()


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
        group.stop()
        raise
    return group


def wait_for_workers(
    names: tuple[str, ...] | list[str], *, app_ping: object, timeout_s: float = 60.0
) -> None:
    """Block until every named worker answers a ping."""
    assert callable(app_ping)
    deadline = time.monotonic() + timeout_s
    wanted = set(names)
    while time.monotonic() < deadline:
        replies = app_ping() or []
        answered = {name.split("@", 1)[0] for reply in replies for name in reply}
        if wanted <= answered:
            return
        time.sleep(0.3)
    raise TimeoutError(f"workers {sorted(wanted)} did not all answer within {timeout_s:.0f} s")


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
        group.stop()


def workers_answering(names: tuple[str, ...] | list[str]) -> bool:
    """True when a worker for every named queue already answers (e.g. under `chordline up`)."""
    from shared.dispatch import dispatch_app

    try:
        replies = dispatch_app().control.ping(timeout=0.5) or []
    except Exception:
        return False
    answered = {name.split("@", 1)[0] for reply in replies for name in reply}
    return set(names) <= answered
