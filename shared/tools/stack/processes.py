"""Named child processes: how every chordline tool starts, signals and stops the processes
it runs (`chordline up`, the benchmarks, the demo, the test suites).

Each process runs a shell command (as Procfile runners do, so ``${VAR:-default}`` works;
``exec`` makes the PID held the command's own) in a session and process group of its own:
a terminal's Ctrl-C reaches only the tool, and a signal sent to the group reaches the
process together with its children (a prefork pool, Flower's). Processes are only ever
stopped by their own PIDs and process groups, never by name.

Output goes to ``<log_dir>/<name>.log``, or line by line to a callable (the prefixed
console of `chordline up`), or nowhere. What keeps processes running when they exit is the
supervisor (``supervisor.py``), built on this. The embedded Postgres and Valkey are not
among them: they are servers that outlive the command that started them, found again by
their data directory and stopped by the PID it records (``embedded.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PROJECT_ROOT = Path(__file__).resolve().parents[3]

# How long a stopped process gets for a warm shutdown (SIGTERM) before its group is killed.
STOP_WAIT_S = 15.0
KILL_WAIT_S = 20.0

# A process's log is appended to across restarts; one that has grown past this when its
# process is first started by a group (a new `chordline up`, a new benchmark) is moved
# aside to ``<name>.log.1`` (replacing the one before), so logs never grow without bound.
LOG_ROTATE_BYTES = 32 * 1024 * 1024

OutputLine = Callable[[str, str], None]  # (process name, one line of its output)


def process_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for a command: this interpreter's tools first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"}


def describe_exit(code: int) -> str:
    """'code 1', or for a signal 'code -9 (SIGKILL)'."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def rotate_log(log: Path, *, limit: int) -> None:
    """Move ``log`` aside to ``<log>.1`` if it has grown past ``limit`` bytes."""
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > limit:
            log.replace(log.with_name(log.name + ".1"))


@dataclass(frozen=True)
class Launch:
    """What a process was last started with, so that it can be started again the same way."""

    command: str
    env: dict[str, str]


@dataclass
class ProcessGroup:
    """Named processes, each in its own process group; ``lock`` orders starts and stops made
    from several threads (a supervisor beside a test that kills)."""

    log_dir: Path | None = None
    output: OutputLine | None = None
    cwd: Path = PROJECT_ROOT
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _launches: dict[str, Launch] = field(init=False, default_factory=dict)

    def start(self, name: str, command: str, *, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``command`` as ``name`` (one already running under that name is left to the
        caller to stop first)."""
        with self.lock:
            stdout = self._stdout(name, first=name not in self._launches)
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", f"exec {command}"],
                    cwd=self.cwd,
                    env=process_env(env),
                    stdout=stdout,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            finally:
                if not isinstance(stdout, int):
                    stdout.close()  # the child has its own copy
            self.processes[name] = proc
            self._launches[name] = Launch(command, env)
            if self.output is not None and proc.stdout is not None:
                threading.Thread(
                    target=self._pump, args=(name, proc.stdout), name=f"out-{name}", daemon=True
                ).start()
            return proc

    def start_again(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` with the command and environment it was last started with."""
        launch = self._launches[name]
        return self.start(name, launch.command, env=launch.env)

    def _stdout(self, name: str, *, first: bool) -> int | IO[bytes]:
        if self.output is not None:
            return subprocess.PIPE
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"{name}.log"
            if first:
                rotate_log(log, limit=LOG_ROTATE_BYTES)
            return log.open("ab")
        return subprocess.DEVNULL

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        assert self.output is not None
        for raw in iter(stream.readline, b""):
            self.output(name, raw.decode(errors="replace").rstrip("\n"))
        stream.close()

    # ------------------------------------------------------------------ state

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def alive(self, name: str) -> bool:
        proc = self.processes.get(name)
        return proc is not None and proc.poll() is None

    def exit_code(self, name: str) -> int | None:
        """The code ``name`` exited with; None while it runs (or was never started)."""
        proc = self.processes.get(name)
        return None if proc is None else proc.poll()

    def running(self) -> dict[str, int]:
        """The PID of each process running now."""
        return {name: proc.pid for name, proc in self.processes.items() if proc.poll() is None}

    # ------------------------------------------------------------------ signals

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the process and its children (its group) and reap it; a process
        still there after ``KILL_WAIT_S`` is killed."""
        with self.lock:
            proc = self.processes.get(name)
            if proc is None:
                return
            _signal_group(proc.pid, sig)
            try:
                proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self, name: str) -> None:
        """A warm shutdown (SIGTERM, Celery's), then whatever is left of its group."""
        with self.lock:
            self.kill(name, signal.SIGTERM)
            if name in self.processes:
                _signal_group(self.pid(name), signal.SIGKILL)

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """SIGKILL ``name`` and start it again as it was last started."""
        with self.lock:
            self.kill(name)
            return self.start_again(name)

    def stop_all(
        self, timeout_s: float = STOP_WAIT_S, *, on_kill: Callable[[str], None] | None = None
    ) -> None:
        """SIGTERM to every process group, then SIGKILL to each group still there after
        ``timeout_s`` (``on_kill`` hears which), and each group's leftovers (a pool child
        whose parent already went). Forgets them all."""
        with self.lock:
            for proc in self.processes.values():
                if proc.poll() is None:
                    _signal_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for name, proc in self.processes.items():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    if on_kill is not None:
                        on_kill(name)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            self.processes.clear()
