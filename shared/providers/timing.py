"""When the operation a provider call belongs to began.

Retrieval is one operation made of several calls (embed the question, search, rerank).
The simulated providers pad the whole operation to its drawn latency, so the real work done
inside it (embedding, the pgvector query) is part of the simulated time rather than added on
top of it, as it would be inside a remote provider's response time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_started: ContextVar[float | None] = ContextVar("chordline_operation_started", default=None)


@contextmanager
def operation() -> Iterator[None]:
    token = _started.set(time.monotonic())
    try:
        yield
    finally:
        _started.reset(token)


def elapsed_ms(since: float | None = None) -> float:
    """Milliseconds since the current operation (or ``since``, a monotonic time) began."""
    began = since if since is not None else _started.get()
    return 0.0 if began is None else (time.monotonic() - began) * 1000
