"""CPU time of the processes that serve a run, by kind, read from Linux's /proc.

A benchmark says what a turn costs in CPU by sampling every process that takes part (the
client, each queue's worker, Postgres, Redis) before and after its run window. A process's
time is its own user and system time plus that of its live descendants (a prefork pool's
children, Postgres' backends) plus what its reaped children used (``cutime``/``cstime``),
so backends that come and go inside the window are counted too.

Postgres and Redis are found by the loopback port their URL names: whoever listens there.
A server on another machine cannot be measured from here; its kind is then left out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", ""})
_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class _Stat:
    ppid: int
    own_ticks: int  # utime + stime
    reaped_ticks: int  # cutime + cstime


def _stat(pid: int) -> _Stat | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return _Stat(ppid=int(fields[1]), own_ticks=utime + stime, reaped_ticks=cutime + cstime)


def _all_stats() -> dict[int, _Stat]:
    stats: dict[int, _Stat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = stat
    return stats


def _tree_ticks(root: int, stats: Mapping[int, _Stat]) -> int:
    """CPU ticks of ``root``, its live descendants and the children it reaped."""
    if root not in stats:
        return 0
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    total, todo = stats[root].reaped_ticks, [root]
    while todo:
        pid = todo.pop()
        total += stats[pid].own_ticks
        todo.extend(children.get(pid, ()))
    return total


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listener_pid(url: str | None) -> int | None:
    """The pid of the local process listening on the port ``url`` names, if any here."""
    if not url:
        return None
    parts = urlsplit(url.split("+", 1)[-1] if "+" in url.split("://", 1)[0] else url)
    if (parts.hostname or "") not in LOOPBACK or parts.port is None:
        return None
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(parts.port)}
    if not inodes:
        return None
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if links & inodes:
            return int(entry.name)
    return None


@dataclass(frozen=True)
class Processes:
    """The processes of one kind: whole trees (a server, a worker and its pool), or only
    the processes themselves (the client, whose children are the workers it started)."""

    pids: tuple[int, ...]
    descendants: bool = True

    def ticks(self, stats: Mapping[int, _Stat]) -> int:
        if self.descendants:
            return sum(_tree_ticks(pid, stats) for pid in self.pids)
        return sum(stats[pid].own_ticks for pid in self.pids if pid in stats)


class CpuMeter:
    """CPU seconds per kind of process over a window: ``start()``, the run, ``stop()``."""

    def __init__(self, kinds: Mapping[str, Processes]) -> None:
        self.kinds = dict(kinds)
        self._started: dict[str, int] | None = None

    def _sample(self) -> dict[str, int]:
        stats = _all_stats()
        return {kind: processes.ticks(stats) for kind, processes in self.kinds.items()}

    def start(self) -> None:
        self._started = self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds each kind used since ``start()``."""
        assert self._started is not None, "start() the meter first"
        ended = self._sample()
        return {kind: max(0, ended[kind] - self._started[kind]) / TICKS_PER_S for kind in ended}


def ms_per_unit(cpu_s: Mapping[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per turn (or per any unit) by kind, with their ``total``."""
    per = {kind: round(seconds * 1000 / max(units, 1), 2) for kind, seconds in cpu_s.items()}
    per["total"] = round(sum(cpu_s.values()) * 1000 / max(units, 1), 2)
    return per
