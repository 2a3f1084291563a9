"""The process's resources, in one place: the Postgres engine and hot-path pool, the Redis
client, a client's Celery app, the dispatcher and stream-writer threads, the model
providers.

Each kind is a ``Resource``: its factory makes it on first use, it is kept for the life of
the process, and the runtime closes all of them together (the CLI when a command ends, a
worker when it shuts down, a test between cases). A forked child never uses or closes what
its parent made: it starts a runtime of its own, and leaves the parent's alone (closing an
inherited connection would end the parent's session on the server).

A test, or a tool, ``install``\\ s a value of its own instead (an in-memory fake), and the
code that asks for the resource gets it (the project's tests keep theirs in tests/fakes.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


def _keep(_: Any) -> None:
    """Nothing to close."""


@dataclass(frozen=True, eq=False)
class Resource(Generic[T]):
    """One kind of per-process resource: how it is made, and how it is closed."""

    name: str
    make: Callable[[], T]
    close: Callable[[T], None] = _keep


class Runtime:
    """The resources of one process, made on first use, closed in reverse order."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._made: dict[Resource[Any], Any] = {}
        self._lock = threading.RLock()

    def get(self, resource: Resource[T]) -> T:
        made = self._made.get(resource)  # the hot path: no lock once made
        if made is not None:
            return cast(T, made)
        with self._lock:
            if resource not in self._made:
                self._made[resource] = resource.make()
            return cast(T, self._made[resource])

    def peek(self, resource: Resource[T]) -> T | None:
        """The resource if it was made (or installed), without making it."""
        with self._lock:
            return cast(T | None, self._made.get(resource))

    def install(self, resource: Resource[T], value: T) -> None:
        """Use ``value`` as this resource from now on (the one made before is closed)."""
        with self._lock:
            self.discard(resource)
            self._made[resource] = value

    def discard(self, resource: Resource[T]) -> None:
        """Close the resource and forget it: the next ``get`` makes a new one."""
        with self._lock:
            made = self._made.pop(resource, None)
        if made is not None:
            resource.close(cast(T, made))

    def close(self) -> None:
        with self._lock:
            made = list(self._made.items())
            self._made.clear()
        for resource, value in reversed(made):
            resource.close(value)


_lock = threading.Lock()
_current: Runtime | None = None
_inherited: list[Runtime] = []  # a forked child's parents': kept referenced, never closed


def runtime() -> Runtime:
    """This process's runtime (a forked child gets its own on first use)."""
    global _current
    current = _current  # the hot path: no lock while this process's runtime stands
    if current is not None and current.pid == os.getpid():
        return current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            if _current is not None:
                _inherited.append(_current)
            _current = Runtime()
        return _current


def reset_runtime() -> None:
    """Close this process's resources (never a parent's) and start again from nothing."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is None:
        return
    if current.pid == os.getpid():
        current.close()
    else:
        _inherited.append(current)
