"""The fault suite's own Postgres and Valkey, which it may kill -9 and restart on the same port.

A restarted server must come back at once where every worker expects it, whatever state
the killed one left (a stale pid file, a port another program grabbed would move an
embedded server), so these start the same binaries themselves, on a fixed port (both
servers set SO_REUSEADDR and rebind at once).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.tools.stack import embedded


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, *, timeout_s: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


def _reap(proc: subprocess.Popen[bytes] | None, pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # started by this process: reap the zombie
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@dataclass
class Valkey:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    appendonly: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def start(self, *, appendonly: bool = True, wipe: bool = False) -> None:
        if wipe:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        # One argument list for every (re)start, so a restarted server is the same server.
        self.proc = subprocess.Popen(
            embedded.valkey_command(port=self.port, root=self.root, appendonly=appendonly),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: self.client().ping(), timeout_s=30, what="valkey answers")

    def kill(self) -> None:
        """kill -9: no shutdown, no final AOF flush."""
        if self.proc is not None:
            _reap(self.proc, self.proc.pid, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _reap(self.proc, self.proc.pid, signal.SIGTERM)
            self.proc = None


@dataclass
class Postgres:
    """Started the first time by the embedded helper (initdb, database), then by itself."""

    data_dir: Path
    port: int = 0
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres" / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chordline"

    def start(self) -> None:
        if not self.port:
            running = embedded.ensure_postgres(self.data_dir)
            self.port, self.pid = running.port, running.pid
            return
        log = (self.data_dir / "postgres" / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(embedded._postgres_bin_dir() / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=400",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **embedded.postgres_process_kwargs(),
        )
        self.pid = self.proc.pid
        wait_until(
            lambda: embedded._postmaster(self.pgdata) is not None,
            timeout_s=60,
            what="postgres accepts connections",
        )

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: SIGQUIT, no checkpoint; crash recovery on restart."""
        _reap(self.proc, self.pid, signal.SIGQUIT)
        self.proc = None

    def stop(self) -> None:
        _reap(self.proc, self.pid, signal.SIGINT)
        self.proc = None
