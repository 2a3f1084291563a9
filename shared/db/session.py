"""One SQLAlchemy engine per process, made on first use and never shared across fork; and
what a caller is told when Postgres cannot be reached."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import sqlalchemy.exc
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings
from shared.errors import DatabaseUnavailable, PermanentError
from shared.runtime import Resource, runtime


def database_url() -> str:
    url = get_settings().database_url
    if not url:
        raise PermanentError(
            "DATABASE_URL is not set and no embedded Postgres was started; run through the "
            "`chordline` CLI or set DATABASE_URL"
        )
    return url


# A worker host that vanishes mid-transaction (power loss, partition) leaves its backend
# holding row locks, and the sweeper's SKIP LOCKED would pass its turn by for as long as
# Postgres believes the peer alive: two hours of default TCP keepalive. Probe after 10 s
# idle, every 5 s, give up after 3: the locks go within ~25 s. Sent as startup options of
# every connection, so they cost no round trip.
SERVER_KEEPALIVES = (
    "tcp_keepalives_idle=10",
    "tcp_keepalives_interval=5",
    "tcp_keepalives_count=3",
)


def startup_options(url: str) -> str:
    """The server settings every chordline connection starts with, after any the URL names."""
    given = make_url(url).query.get("options")
    ours = " ".join(f"-c {setting}" for setting in SERVER_KEEPALIVES)
    return f"{given} {ours}" if isinstance(given, str) and given else ours


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


@dataclass(frozen=True)
class Database:
    """This process's engine and the sessions made on it."""

    engine: Engine
    sessions: sessionmaker[Session]


def _connect() -> Database:
    url = database_url()
    settings = get_settings().db
    engine = create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=_pre_ping,
        pool_recycle=1800,
        connect_args={
            "options": startup_options(url),
            "connect_timeout": settings.connect_timeout_s,
        },
    )
    return Database(engine, sessionmaker(engine, expire_on_commit=False))


DATABASE = Resource("postgres engine", make=_connect, close=lambda db: db.engine.dispose())


def get_engine() -> Engine:
    """The engine of this process. A forked child gets a fresh one, not its parent's sockets."""
    return runtime().get(DATABASE).engine


def dispose_engine() -> None:
    runtime().discard(DATABASE)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    with runtime().get(DATABASE).sessions() as session, session.begin():
        yield session


# SQLSTATEs of a server that is going away or not yet there (the rest of class 08 is the
# connection's own failure): the same outage as a refused connection, to a caller.
_OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def _postgres_failure(exc: Exception, retry_advice: str) -> str:
    """One line: what failed, the driver's first line, and that retrying may succeed."""
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig else exc
    sqlstate: str | None = getattr(cause, "sqlstate", None)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = (lines[0] if lines else type(cause).__name__)[:300]
    if sqlstate is None or sqlstate.startswith("08") or sqlstate in _OUTAGE_SQLSTATES:
        what = "Postgres (DATABASE_URL) could not be reached"
    else:
        what = f"Postgres (DATABASE_URL) could not run the statement now (SQLSTATE {sqlstate})"
    return f"{what}: {detail}; this is transient: {retry_advice}"


@contextmanager
def transient_database_failures(retry_advice: str = "retry later") -> Iterator[None]:
    """The driver's OperationalError (psycopg's or SQLAlchemy's: Postgres down, restarting,
    unreachable, or the connection lost mid-statement) as ``DatabaseUnavailable``."""
    try:
        yield
    except (psycopg.OperationalError, sqlalchemy.exc.OperationalError) as exc:
        raise DatabaseUnavailable(_postgres_failure(exc, retry_advice)) from exc
