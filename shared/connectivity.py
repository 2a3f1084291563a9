"""Can Postgres and Redis be reached where DATABASE_URL and REDIS_URL point?

A command checks each configured server once, with a short timeout and no retries, before
it starts anything (``probe_postgres``, ``probe_redis``), so a wrong URL or a stopped
server fails in seconds with one line: the setting, the host and port, and what failed.
``as_unreachable`` turns the drivers' connection errors (psycopg, SQLAlchemy, redis-py,
kombu) raised later in a command into the same error. Messages never contain a password.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.config import get_settings
from shared.errors import ServiceUnreachable

if TYPE_CHECKING:
    import redis

PROBE_TIMEOUT_S = 3.0
DATABASE_SETTING = "DATABASE_URL"
REDIS_SETTING = "REDIS_URL"


def postgres_endpoint(url: str) -> str:
    """``host:port`` of a PostgreSQL URL, without credentials."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host") or "localhost (unix socket)")
    return f"{host}:{parsed.port or 5432}"


def redis_endpoint(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, without credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _reason(message: str) -> str:
    """The part of a driver's message that says what failed, in lower case."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = lines[0] if lines else "unknown error"
    text = re.sub(r"^connection failed:\s*", "", text)
    text = re.sub(r'^connection to server (at|on) "[^"]*"(, port \d+)?\s*(\([^)]*\),?)?', "", text)
    text = re.sub(r"^[^:]*?failed:\s*", "", text)
    text = re.sub(r"^Error -?\d+ (connecting to|while writing to) \S+\.\s+", "", text)
    text = re.sub(r"^(FATAL|ERROR):\s*", "", text)
    text = text.strip().rstrip(".")
    lowered = text.lower()
    if "timeout" in lowered or "timed out" in lowered:
        return "no answer: timed out"
    if "name or service not known" in lowered or "could not translate host name" in lowered:
        return "unknown host"
    if "temporary failure in name resolution" in lowered:
        return "unknown host (name resolution failed)"
    return (text[:1].lower() + text[1:]) or "unknown error"


def postgres_unreachable(url: str | None, exc: BaseException) -> ServiceUnreachable:
    if not url:
        return ServiceUnreachable("embedded Postgres", f"connection failed ({_reason(str(exc))})")
    return ServiceUnreachable(
        DATABASE_SETTING, f"cannot connect to {postgres_endpoint(url)} ({_reason(str(exc))})"
    )


def redis_unreachable(url: str | None, exc: BaseException) -> ServiceUnreachable:
    if not url:
        return ServiceUnreachable("embedded Redis", f"connection failed ({_reason(str(exc))})")
    return ServiceUnreachable(
        REDIS_SETTING, f"cannot connect to {redis_endpoint(url)} ({_reason(str(exc))})"
    )


def probe_postgres(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Connect once, bounded by ``timeout_s``; the server's version, or ServiceUnreachable."""
    import psycopg

    from shared.db.direct import libpq_url

    try:
        with psycopg.connect(
            libpq_url(url), autocommit=True, connect_timeout=max(2, round(timeout_s))
        ) as conn:
            return str(conn.info.parameter_status("server_version") or "?")
    except psycopg.Error as exc:
        raise postgres_unreachable(url, exc) from None


def redis_client(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> redis.Redis:
    """A Redis client that tries once, each step bounded by ``timeout_s``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )


def probe_redis(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """PING once, bounded by ``timeout_s``; ServiceUnreachable if there is no PONG."""
    import redis

    client = redis_client(url, timeout_s=timeout_s)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise redis_unreachable(url, exc) from None
    except redis.ResponseError as exc:  # e.g. NOAUTH: reached, but refused
        raise ServiceUnreachable(
            REDIS_SETTING, f"{redis_endpoint(url)} refused the connection ({_reason(str(exc))})"
        ) from None
    finally:
        client.close()


def _driver_of(exc: BaseException) -> str | None:
    """Which server a driver's connection error is about, from the exception's type."""
    module = type(exc).__module__.split(".", 1)[0]
    name = type(exc).__name__
    if module in ("psycopg", "sqlalchemy") and name in ("OperationalError", "InterfaceError"):
        return DATABASE_SETTING
    if module == "redis" and name in ("ConnectionError", "TimeoutError", "BusyLoadingError"):
        return REDIS_SETTING
    if module == "kombu" and name == "OperationalError":
        return REDIS_SETTING
    return None


def as_unreachable(exc: BaseException) -> ServiceUnreachable | None:
    """The connection error in ``exc`` or its causes as one chordline error, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        setting = _driver_of(current)
        if setting is not None:
            cause = getattr(current, "orig", None) or current
            settings = get_settings()
            if setting == DATABASE_SETTING:
                return postgres_unreachable(settings.database_url, cause)
            return redis_unreachable(settings.redis_url, cause)
        current = current.__cause__ or current.__context__
    return None
