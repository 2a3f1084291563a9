"""One Redis client per process (its own connection pool), never inherited across fork."""

from __future__ import annotations

import os
import threading

import redis

from shared.config import get_settings
from shared.errors import PermanentError

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_pid: int | None = None


def redis_url() -> str:
    url = get_settings().redis_url
    if not url:
        raise PermanentError(
            "REDIS_URL is not set and no embedded Redis was started; run through the "
            "`chordline` CLI or set REDIS_URL"
        )
    return url


def get_redis() -> redis.Redis:
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = redis.Redis.from_url(
                redis_url(),
                decode_responses=True,
                socket_timeout=10,
                socket_connect_timeout=5,
                health_check_interval=10,
                max_connections=200,
            )
            _client_pid = os.getpid()
        return _client


def reset_redis() -> None:
    global _client
    with _lock:
        if _client is not None:
            _client.close()
        _client = None
