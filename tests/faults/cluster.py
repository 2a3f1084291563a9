"""Worker processes from the Procfile, a supervisor that restarts what dies, and a killer
that SIGKILLs a quarter of them on a timer (as Temporal's pre-production guide restarts
20-30 % of workers)."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.tools.stack.procfile import ProcessGroup, read_procfile, wait_for_workers

TURN_WORKERS = ("orchestrator", "researcher", "merge", "agents")
PROCESSES = (*TURN_WORKERS, "maintenance", "beat")
KILLABLE = (*TURN_WORKERS, "maintenance")


def prefork_variant(command: str, *, children: int = 2) -> str:
    """The same Procfile entry with a prefork pool: a task runs in a child process."""
    return re.sub(r"-P threads -c \d+", f"-P prefork -c {children}", command)


@dataclass
class Cluster:
    env: dict[str, str]
    log_dir: Path
    group: ProcessGroup = field(init=False)
    variants: dict[str, str] = field(default_factory=dict)
    env_for: dict[str, dict[str, str]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    spared: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.group = ProcessGroup(log_dir=self.log_dir)

    def command(self, name: str) -> str:
        return self.variants.get(name) or read_procfile()[name]

    def start(self, name: str) -> subprocess.Popen[bytes]:
        with self.lock:
            env = {**os.environ, **self.env, **self.env_for.get(name, {})}
            return self.group.start(name, self.command(name), env=env)

    def pid(self, name: str) -> int:
        return self.group.processes[name].pid

    def alive(self, name: str) -> bool:
        proc = self.group.processes.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the process and its pool children (its own process group), and reap it."""
        with self.lock:
            proc = self.group.processes.get(name)
            if proc is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self, name: str) -> None:
        """Celery's warm shutdown (SIGTERM), then whatever is left of its group."""
        self.kill(name, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid(name), signal.SIGKILL)

    def restart(self, name: str) -> None:
        with self.lock:
            self.kill(name)
            self.start(name)
            self.restarts += 1

    @contextlib.contextmanager
    def held_down(self, *names: str) -> Iterator[None]:
        """Stop these processes and keep the supervisor from restarting them."""
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
        with self.lock:
            dead = [n for n in PROCESSES if n not in self.held and not self.alive(n)]
            for name in dead:
                self.start(name)
                self.restarts += 1
        return dead

    def wait_ready(self, names: tuple[str, ...] = (*TURN_WORKERS, "maintenance")) -> None:
        from shared.dispatch import dispatch_app

        wait_for_workers(
            list(names), app_ping=lambda: dispatch_app().control.ping(timeout=1.0), timeout_s=120
        )

    def stop_all(self) -> None:
        self.group.stop()


class Supervisor(threading.Thread):
    """Restarts any process that died, as a process manager would, twice a second."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(name="fault-supervisor", daemon=True)
        self.cluster = cluster
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.cluster.restart_dead()


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
