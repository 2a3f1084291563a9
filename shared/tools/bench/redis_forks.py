"""Redis forks during a benchmark, which pause the server for every system alike.

Redis and Valkey fork to rewrite their append-only file (automatically, each time it has
grown by ``auto-aof-rewrite-percentage``) or to save a snapshot. The fork stops the server
while the kernel copies its page tables (the server reports how long, ``latest_fork_usec``),
and every turn in flight then waits, in whichever system is running at that moment. So a
benchmark counts the server's forks over its measured rounds and says when there were some,
and on chordline's own embedded server, which keeps what earlier runs wrote (it rewrote its
file every second or third bench run on the development machine), it compacts the
append-only file first: the rewrite then comes before the measurement, and the next one only
after the file has grown as much again.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import redis

REWRITE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Forks:
    """How often the server has forked since it started, and how long its last fork took."""

    count: int
    latest_ms: float


def forks(client: redis.Redis) -> Forks | None:
    """The server's fork count (None when it does not report one)."""
    stats: dict[str, Any] = client.info("stats")
    if "total_forks" not in stats:
        return None
    return Forks(int(stats["total_forks"]), float(stats.get("latest_fork_usec", 0)) / 1000)


def forks_between(before: Forks | None, after: Forks | None) -> dict[str, float] | None:
    """The forks of a run window, for the bench's JSON (None when the server hides them)."""
    if before is None or after is None:
        return None
    count = after.count - before.count
    return {"during_run": count, "latest_fork_ms": round(after.latest_ms, 1) if count else 0.0}


def compact_append_only_file(client: redis.Redis, timeout_s: float = REWRITE_TIMEOUT_S) -> bool:
    """Rewrite the server's append-only file now and wait for the rewrite to end. False when
    the server keeps none, or the rewrite did not end within ``timeout_s``."""
    if not _persistence(client).get("aof_enabled"):
        return False
    with contextlib.suppress(redis.ResponseError):  # one already runs or waits: wait for it
        client.bgrewriteaof()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = _persistence(client)
        if not state.get("aof_rewrite_in_progress") and not state.get("aof_rewrite_scheduled"):
            return True
        time.sleep(0.1)
    return False


def fork_warning(window: dict[str, float] | None) -> str | None:
    """One line for a person when the server forked during the measured rounds."""
    if not window or not window["during_run"]:
        return None
    count = int(window["during_run"])
    return (
        f"warning: Redis forked {count} time{'s' if count > 1 else ''} during the measured "
        f"rounds (an append-only file rewrite or a snapshot; the last fork took "
        f"{window['latest_fork_ms']:g} ms), and the turns in flight then, of whichever "
        f"system was running, waited for it: their tails include that pause"
    )


def _persistence(client: redis.Redis) -> dict[str, Any]:
    state: dict[str, Any] = client.info("persistence")
    return state
