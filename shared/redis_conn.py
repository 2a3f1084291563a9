"""One Redis client per process (its own connection pool), never inherited across fork."""

from __future__ import annotations

import redis

from shared.config import get_settings
from shared.errors import PermanentError
from shared.runtime import Resource, runtime


def redis_url() -> str:
    url = get_settings().redis_url
    if not url:
        raise PermanentError(
            "REDIS_URL is not set and no embedded Redis was started; run through the "
            "`chordline` CLI or set REDIS_URL"
        )
    return url


def _connect() -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(),
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=10,
        max_connections=200,
    )


REDIS = Resource("redis client", make=_connect, close=lambda client: client.close())


def get_redis() -> redis.Redis:
    return runtime().get(REDIS)


def reset_redis() -> None:
    runtime().discard(REDIS)
