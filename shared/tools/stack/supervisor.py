"""What keeps named processes running: the one supervisor of chordline's tools.

`chordline up` runs its Procfile processes under it, and so does the fault-injection suite.
A process that exits (a crash, a kill -9, a worker refusing to start while Redis comes back)
is started again after a backoff: by default 1 s, doubling up to 30 s while it keeps
failing, back to 1 s once it has stayed up for a minute. Each exit is one line (which
process, its exit code, when it restarts); the others keep running. A process put on hold
(``held``) is left down until it is taken off hold.

``run()`` (for `chordline up`) supervises until Ctrl-C (SIGINT) or SIGTERM, then stops
everything: SIGTERM to every process group (Celery's warm shutdown), SIGKILL to any group
still there five seconds later, and no restarts after that. ``in_background()`` supervises
from a thread instead, for as long as a ``with`` block runs.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType

from shared.tools.stack.processes import ProcessGroup, describe_exit

SHUTDOWN_WAIT_S = 5.0
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


@dataclass
class _Restart:
    started_at: float
    due_at: float | None = None  # when an exited process is started again
    last_delay_s: float | None = None


@dataclass
class Supervisor:
    """Starts ``commands`` in ``group`` and starts again each one that exits."""

    group: ProcessGroup
    commands: dict[str, str]
    env: dict[str, str]
    say: Callable[[str], None]
    backoff: Backoff = field(default_factory=Backoff)
    held: set[str] = field(default_factory=set)
    tick_s: float = 0.1
    restarts: int = 0
    _state: dict[str, _Restart] = field(init=False, default_factory=dict)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _stop_signal: int | None = field(init=False, default=None)

    def start_all(self) -> None:
        for name, command in self.commands.items():
            proc = self.group.start(name, command, env=self.env)
            self._state[name] = _Restart(started_at=time.monotonic())
            self.say(f"{name} started (pid {proc.pid})")

    def tick(self) -> None:
        """Schedule a restart for each process that exited; start those that are due."""
        now = time.monotonic()
        with self.group.lock:
            for name, state in self._state.items():
                if name in self.held:
                    state.due_at = None
                    continue
                code = self.group.exit_code(name)
                if code is not None and state.due_at is None:
                    self._schedule(name, state, code, now)
                if state.due_at is not None and now >= state.due_at:
                    proc = self.group.start_again(name)
                    state.started_at, state.due_at = time.monotonic(), None
                    self.restarts += 1
                    self.say(f"{name} started (pid {proc.pid})")

    def revive(self) -> list[str]:
        """Start again at once (no backoff) every exited process not on hold; their names."""
        with self.group.lock:
            exited = [
                name for name in self._state if name not in self.held and not self.group.alive(name)
            ]
            for name in exited:
                self._state[name].due_at = time.monotonic()
            self.tick()
        return exited

    def _schedule(self, name: str, state: _Restart, code: int, now: float) -> None:
        delay = self.backoff.next_delay(state.last_delay_s, now - state.started_at)
        state.last_delay_s, state.due_at = delay, now + delay
        at = datetime.fromtimestamp(time.time() + delay).strftime("%H:%M:%S")
        self.say(f"{name} exited with {describe_exit(code)}; restarting in {delay:g} s ({at})")

    def pids(self) -> dict[str, int]:
        """The PID of each process running now."""
        return self.group.running()

    # ------------------------------------------------------------------ lifecycle

    def stop(self, signum: int | None = None) -> None:
        """Ask the loop to stop (safe from a signal handler or another thread)."""
        if self._stop_signal is None:
            self._stop_signal = signum
        self._stopping.set()

    def _shutdown(self) -> None:
        self.group.stop_all(
            SHUTDOWN_WAIT_S,
            on_kill=lambda name: self.say(
                f"{name} still running after {SHUTDOWN_WAIT_S:g} s: SIGKILL"
            ),
        )

    def run(self) -> int:
        """Start everything and supervise until stop() or SIGINT/SIGTERM; then stop all.

        Returns 130 after SIGINT, 143 after SIGTERM, 0 after stop().
        """

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.say(f"{signal.Signals(signum).name} received: stopping everything")
            self.stop(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in SIGNAL_EXIT_CODES}
        try:
            self.start_all()
            while not self._stopping.wait(self.tick_s):
                self.tick()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._stop_signal is None:
            return 0
        return SIGNAL_EXIT_CODES.get(signal.Signals(self._stop_signal), 1)

    @contextmanager
    def in_background(self) -> Iterator[Supervisor]:
        """Start everything, supervise from a thread while the block runs, then stop all."""
        self.start_all()
        thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop()
            thread.join()
            self._shutdown()

    def _loop(self) -> None:
        while not self._stopping.wait(self.tick_s):
            self.tick()
