"""Worker processes from the Procfile under chordline's supervisor (which starts again what
dies), and a killer that SIGKILLs a quarter of them on a timer (as Temporal's
pre-production guide restarts 20-30 % of workers)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.tools.stack.processes import ProcessGroup
from shared.tools.stack.procfile import read_procfile, wait_for_workers
from shared.tools.stack.supervisor import Backoff, Supervisor

TURN_WORKERS = ("orchestrator", "researcher", "merge", "agents")
PROCESSES = (*TURN_WORKERS, "maintenance", "beat")
KILLABLE = (*TURN_WORKERS, "maintenance")
# A process that died is started again within half a second, however often it dies: the
# scenarios measure how the system rides out deaths, not how a backoff spaces them.
PROMPT_RESTARTS = Backoff(initial_s=0.0, max_s=0.0)


def prefork_variant(command: str, *, children: int = 2) -> str:
    """The same Procfile entry with a prefork pool: a task runs in a child process."""
    return re.sub(r"-P threads -c \d+", f"-P prefork -c {children}", command)


@dataclass
class Cluster:
    env: dict[str, str]
    log_dir: Path
    group: ProcessGroup = field(init=False)
    supervisor: Supervisor = field(init=False)
    variants: dict[str, str] = field(default_factory=dict)
    env_for: dict[str, dict[str, str]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    spared: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.group = ProcessGroup(log_dir=self.log_dir)
        self.supervisor = Supervisor(
            group=self.group,
            commands={name: self.command(name) for name in PROCESSES},
            env=self.process_env(""),
            say=self._log,
            backoff=PROMPT_RESTARTS,
            held=self.held,
            tick_s=0.5,
        )

    @property
    def lock(self) -> threading.RLock:
        return self.group.lock

    def _log(self, line: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "supervisor.log").open("a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def command(self, name: str) -> str:
        return self.variants.get(name) or read_procfile()[name]

    def process_env(self, name: str) -> dict[str, str]:
        return {**os.environ, **self.env, **self.env_for.get(name, {})}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        with self.lock:
            return self.group.start(name, self.command(name), env=self.process_env(name))

    def supervised(self) -> contextlib.AbstractContextManager[Supervisor]:
        """Start every process, and start again each one that dies, while the block runs."""
        return self.supervisor.in_background()

    def pid(self, name: str) -> int:
        return self.group.pid(name)

    def alive(self, name: str) -> bool:
        return self.group.alive(name)

    def stop(self, name: str) -> None:
        self.group.stop(name)

    def restart(self, name: str) -> None:
        """SIGKILL, then start it again with the current command and settings."""
        with self.lock:
            self.group.kill(name)
            self.start(name)

    @contextlib.contextmanager
    def held_down(self, *names: str) -> Iterator[None]:
        """Stop these processes and keep the supervisor from starting them again."""
        with self.lock:
            self.held.update(names)
            for name in names:
                self.stop(name)
        try:
            yield
        finally:
            with self.lock:
                self.held.difference_update(names)
                for name in names:
                    self.start(name)

    @contextlib.contextmanager
    def environment(self, overrides: dict[str, dict[str, str]]) -> Iterator[None]:
        """Run some processes with extra settings for a while (restarted both ways)."""
        with self.lock:
            self.env_for.update(overrides)
            for name in overrides:
                self.restart(name)
        try:
            yield
        finally:
            with self.lock:
                for name in overrides:
                    self.env_for.pop(name, None)
                    self.restart(name)

    @contextlib.contextmanager
    def variant(self, name: str, command: str) -> Iterator[None]:
        """Run ``name`` with another command for a while, then as the Procfile says."""
        with self.lock:
            self.variants[name] = command
            self.restart(name)
        try:
            yield
        finally:
            with self.lock:
                self.variants.pop(name, None)
                self.restart(name)

    def restart_dead(self) -> list[str]:
        """Start again, at once, every process that died and is not held down."""
        return self.supervisor.revive()

    def wait_ready(self, names: tuple[str, ...] = (*TURN_WORKERS, "maintenance")) -> None:
        from shared.dispatch import dispatch_app

        wait_for_workers(
            list(names), app_ping=lambda: dispatch_app().control.ping(timeout=1.0), timeout_s=120
        )

    def stop_all(self) -> None:
        self.group.stop_all()


class Killer(threading.Thread):
    """Every ``interval_s``, SIGKILL a quarter of the killable workers and start them again."""

    def __init__(self, cluster: Cluster, *, interval_s: float, seed: int) -> None:
        super().__init__(name="fault-killer", daemon=True)
        self.cluster, self.interval_s = cluster, interval_s
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.kills: list[tuple[float, str]] = []

    def run(self) -> None:
        wait_s = self.interval_s / 2  # the first kill comes early, then one per interval
        while not self.halt.wait(wait_s):
            wait_s = self.interval_s
            with self.cluster.lock:
                spare = self.cluster.held | self.cluster.spared
                candidates = [n for n in KILLABLE if n not in spare]
                count = max(1, round(0.25 * len(candidates)))
                for name in self.rng.sample(candidates, min(count, len(candidates))):
                    self.kills.append((time.time(), name))
                    self.cluster.restart(name)
