"""One SQLAlchemy engine per process, made on first use and never shared across fork."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings
from shared.errors import PermanentError

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_sessions: sessionmaker[Session] | None = None


def database_url() -> str:
    url = get_settings().database_url
    if not url:
        raise PermanentError(
            "DATABASE_URL is not set and no embedded Postgres was started; run through the "
            "`chordline` CLI or set DATABASE_URL"
        )
    return url


def _configure_connection(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # A worker host that vanishes mid-transaction (power loss, partition) leaves its backend
    # holding row locks, and the sweeper's SKIP LOCKED would pass its turn by for as long as
    # Postgres believes the peer alive: two hours of default TCP keepalive. Probe after
    # 10 s idle, every 5 s, give up after 3: the locks go within ~25 s.
    for setting, value in (("idle", 10), ("interval", 5), ("count", 3)):
        cursor.execute(f"SET tcp_keepalives_{setting} = {value}")
    cursor.close()
    dbapi_connection.commit()  # type: ignore[attr-defined]


_pre_ping = True


def check_connections_on_checkout(enabled: bool) -> None:
    """Whether the pool pings a connection before handing it out (before the engine exists).

    Clients keep the ping: their first call after a database restart then still succeeds.
    Worker processes turn it off: it costs a round trip per transaction on the hot path, and
    a stale connection there fails the task with OperationalError, which is retried (and
    the pool, seeing a disconnect, replaces all its connections).
    """
    global _pre_ping
    _pre_ping = enabled


def get_engine() -> Engine:
    """The engine of this process. A forked child gets a fresh one, not its parent's sockets."""
    global _engine, _engine_pid, _sessions
    with _lock:
        if _engine is None or _engine_pid != os.getpid():
            if _engine is not None:
                _engine.dispose(close=False)  # the parent's connections stay the parent's
            _engine = create_engine(
                database_url(),
                pool_size=get_settings().db.pool_size,
                max_overflow=get_settings().db.max_overflow,
                pool_pre_ping=_pre_ping,
                pool_recycle=1800,
            )
            event.listen(_engine, "connect", _configure_connection)
            _engine_pid = os.getpid()
            _sessions = sessionmaker(_engine, expire_on_commit=False)
        return _engine


def dispose_engine() -> None:
    global _engine, _sessions
    with _lock:
        if _engine is not None:
            # In a forked child the pooled connections are the parent's: drop them unclosed.
            _engine.dispose(close=_engine_pid == os.getpid())
        _engine = None
        _sessions = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    get_engine()
    assert _sessions is not None
    with _sessions() as session, session.begin():
        yield session
