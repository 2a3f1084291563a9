"""What `chordline up` runs its Procfile processes under: each in its own process group, its
output prefixed with its name, and started again when it exits.

A process that exits (a crash, a kill -9, a worker refusing to start while Redis comes
back) is restarted after a backoff: 1 s, doubling up to 30 s while it keeps failing, back
to 1 s once it has stayed up for a minute. Each exit is one console line: which process,
its exit code, when it restarts. The rest of the stack keeps running.

Ctrl-C (SIGINT) or SIGTERM stops everything: SIGTERM to every process group (Celery's warm
shutdown), SIGKILL to any group still there five seconds later, and no restarts after that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO

KILL_WAIT_S = 5.0
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class Backoff:
    """Delays before a restart: ``initial_s`` doubling to ``max_s``; reset after a good run."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def next_delay(self, previous_s: float | None, uptime_s: float) -> float:
        if previous_s is None or uptime_s >= self.reset_after_s:
            return self.initial_s
        return min(self.max_s, previous_s * 2)


def describe_exit(code: int) -> str:
    """'code 1', or for a signal 'code -9 (SIGKILL)'."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


@dataclass
class Supervised:
    name: str
    command: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    last_delay_s: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Runs named shell commands until stopped, restarting each one that exits."""

    commands: dict[str, str]
    env: dict[str, str]
    cwd: Path
    say: Callable[[str], None]
    out: IO[str]
    backoff: Backoff = field(default_factory=Backoff)
    _processes: dict[str, Supervised] = field(init=False, default_factory=dict)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _stop_signal: int | None = field(init=False, default=None)
    _write_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._processes = {n: Supervised(n, c) for n, c in self.commands.items()}
        self._width = max((len(n) for n in self.commands), default=6)

    # ------------------------------------------------------------------ output

    def _write(self, name: str, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        with self._write_lock:
            self.out.write(f"{stamp} {name:<{self._width}} | {text}\n")
            self.out.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._write(name, raw.decode(errors="replace").rstrip("\n"))
        stream.close()

    # ------------------------------------------------------------------ processes

    def _start(self, entry: Supervised) -> None:
        # Through the shell so ${VAR:-default} works; "exec" makes the PID the process's own.
        # Its own session (and process group): a terminal's Ctrl-C reaches only us, and a
        # stop can signal the process together with its children (prefork pool, Flower).
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {entry.command}"],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        entry.proc, entry.started_at, entry.restart_at = proc, time.monotonic(), None
        assert proc.stdout is not None
        threading.Thread(
            target=self._pump, args=(entry.name, proc.stdout), name=f"out-{entry.name}", daemon=True
        ).start()
        self.say(f"{entry.name} started (pid {proc.pid})")

    def _schedule_restart(self, entry: Supervised, code: int) -> None:
        now = time.monotonic()
        delay = self.backoff.next_delay(entry.last_delay_s, now - entry.started_at)
        entry.last_delay_s, entry.restart_at = delay, now + delay
        at = datetime.fromtimestamp(time.time() + delay).strftime("%H:%M:%S")
        self.say(
            f"{entry.name} exited with {describe_exit(code)}; restarting in {delay:g} s ({at})"
        )

    def _tick(self) -> None:
        now = time.monotonic()
        for entry in self._processes.values():
            if entry.proc is not None and entry.restart_at is None:
                code = entry.proc.poll()
                if code is not None:
                    self._schedule_restart(entry, code)
            if entry.restart_at is not None and now >= entry.restart_at:
                entry.restarts += 1
                self._start(entry)

    def pids(self) -> dict[str, int]:
        """The PID of each process running now."""
        return {
            n: e.proc.pid
            for n, e in self._processes.items()
            if e.proc is not None and e.proc.poll() is None
        }

    # ------------------------------------------------------------------ lifecycle

    def stop(self, signum: int | None = None) -> None:
        """Ask the loop to stop everything (safe from a signal handler or another thread)."""
        if self._stop_signal is None:
            self._stop_signal = signum
        self._stopping.set()

    def _signal_all(self, sig: signal.Signals) -> None:
        for entry in self._processes.values():
            if entry.proc is not None and entry.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.proc.pid, sig)

    def _shutdown(self) -> None:
        self._signal_all(signal.SIGTERM)  # Celery's warm shutdown
        deadline = time.monotonic() + KILL_WAIT_S
        running = [e.proc for e in self._processes.values() if e.proc is not None]
        while time.monotonic() < deadline and any(p.poll() is None for p in running):
            time.sleep(0.1)
        for entry in self._processes.values():
            if entry.proc is not None and entry.proc.poll() is None:
                self.say(f"{entry.name} still running after {KILL_WAIT_S:g} s: SIGKILL")
        # Each group's leftovers too (a pool child whose parent already went).
        for entry in self._processes.values():
            if entry.proc is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.proc.pid, signal.SIGKILL)
                entry.proc.wait()

    def run(self) -> int:
        """Start everything and supervise until stop() or SIGINT/SIGTERM; then stop all.

        Returns 130 after SIGINT, 143 after SIGTERM, 0 after stop().
        """

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.say(f"{signal.Signals(signum).name} received: stopping everything")
            self.stop(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in SIGNAL_EXIT_CODES}
        try:
            for entry in self._processes.values():
                self._start(entry)
            while not self._stopping.wait(0.1):
                self._tick()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._stop_signal is None:
            return 0
        return SIGNAL_EXIT_CODES.get(signal.Signals(self._stop_signal), 1)
