"""Plain SQL on the turn's hot path: one statement, one round trip.

Every turn runs a few statements per stage. Through an ORM session each of them also costs a
``BEGIN`` and a ``COMMIT`` round trip, and SQLAlchemy's statement, result and pool
processing (a checkout and check-in of its pool alone cost more CPU than a ``SELECT 1``).
The hot path instead runs each statement on its own, in autocommit mode (a single
statement is its own transaction, atomic however many rows its CTEs touch), on psycopg
connections kept in a small pool of their own, always in autocommit mode. psycopg prepares
a statement on a connection after it has run a few times there, so Postgres parses each of
them once per connection.

A statement that needs to be ordered after a lock taken by another runs in one transaction
with it, sent as one pipeline (``transaction_pipeline``): still one round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import make_url

from shared.config import get_settings
from shared.db.session import database_url, startup_options
from shared.runtime import Resource, runtime


def libpq_url(url: str) -> str:
    """SQLAlchemy's ``postgresql+psycopg://`` URL as libpq reads it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class DirectPool:
    """Connections in autocommit mode, the most recently used first, at most ``max_idle``
    kept between uses. A connection is made when none is idle; one that broke, or that was
    handed back inside a transaction, is closed instead of kept."""

    def __init__(self, url: str, *, max_idle: int) -> None:
        self.url = libpq_url(url)
        self.options = startup_options(url)
        self.connect_timeout = get_settings().db.connect_timeout_s
        self.max_idle = max_idle
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return psycopg.connect(
            self.url, autocommit=True, options=self.options, connect_timeout=self.connect_timeout
        )

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        reusable = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        if reusable:
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


DIRECT_POOL = Resource(
    "postgres hot-path pool",
    make=lambda: DirectPool(database_url(), max_idle=get_settings().db.pool_size),
    close=DirectPool.close,
)


def direct_pool() -> DirectPool:
    """This process's pool (a forked child makes its own, see shared/runtime.py)."""
    return runtime().get(DIRECT_POOL)


def dispose_direct_pool() -> None:
    runtime().discard(DIRECT_POOL)


@contextmanager
def direct_connection() -> Iterator[psycopg.Connection[Any]]:
    """A connection in autocommit mode from this process's direct pool."""
    pool = direct_pool()
    conn = pool.take()
    try:
        yield conn
    finally:
        pool.give_back(conn)


@contextmanager
def transaction_pipeline(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Statements run in one transaction and sent in one round trip: ``BEGIN``, each
    statement, ``COMMIT``. Results are read after the block; an error rolls all back.

    (psycopg's ``transaction()`` inside a pipeline syncs at its start and its end: three
    times the time of this explicit pair.)
    """
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        raise
