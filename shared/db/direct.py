"""Plain SQL on the turn's hot path: one statement, one round trip.

Every turn runs a few statements per stage. Through an ORM session each of them also costs a
``BEGIN`` and a ``COMMIT`` round trip, and SQLAlchemy's statement and result processing.
The hot path instead runs each statement on its own, in autocommit mode (a single
statement is its own transaction, atomic however many rows its CTEs touch), on a psycopg
connection borrowed from the process's one SQLAlchemy pool: the same connections, sizes and
connect-time settings as everything else. psycopg prepares a statement on a connection
after it has run a few times there, so Postgres parses each of them once per connection.

A statement that needs to be ordered after a lock taken by another runs in one transaction
with it, sent as one pipeline (``transaction_pipeline``): still one round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from shared.db.session import get_engine


@contextmanager
def direct_connection() -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection in autocommit mode, handed back in the mode it came in.

    A connection that broke under its statement is dropped from the pool, not handed back.
    """
    pooled = get_engine().raw_connection()
    conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        conn.autocommit = True
        yield conn
    finally:
        if conn.broken or conn.closed:
            pooled.invalidate()  # the pool makes a new connection in its place
        else:
            conn.autocommit = False  # what SQLAlchemy sessions expect of the pool
            pooled.close()  # back to the pool


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
