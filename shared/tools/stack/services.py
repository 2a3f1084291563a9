"""Services a command needs: the real ones when URLs are set, the embedded ones otherwise.

``services()`` is what every CLI command that touches Postgres or Redis runs inside: with
DATABASE_URL / REDIS_URL unset it reuses the embedded servers already running on the data
dir, or starts them and stops them again when the command is done.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from shared.config import get_settings, reset_settings
from shared.connectivity import probe_postgres, probe_redis
from shared.runtime import reset_runtime
from shared.tools.stack.embedded import EmbeddedServices, ensure_services


def _apply_urls(database_url: str | None, redis_url: str | None) -> None:
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    reset_process_state()


def reset_process_state() -> None:
    """Forget cached settings and close the resources made from them."""
    reset_settings()
    reset_runtime()


@contextmanager
def services(
    *, postgres: bool = True, redis: bool = True, keep: bool = False
) -> Iterator[EmbeddedServices]:
    """Make DATABASE_URL and REDIS_URL point at running servers for the duration.

    A configured server is reached once first, briefly: a wrong URL or a stopped server
    fails here, in seconds, with ServiceUnreachable, before anything starts.
    """
    settings = get_settings()
    need_pg = postgres and not settings.database_url
    need_redis = redis and not settings.redis_url
    if postgres and settings.database_url:
        probe_postgres(settings.database_url)
    if redis and settings.redis_url:
        probe_redis(settings.redis_url)
    embedded = ensure_services(
        data_dir=settings.data_dir, need_postgres=need_pg, need_redis=need_redis
    )
    try:
        _apply_urls(
            embedded.postgres.url if embedded.postgres else None,
            embedded.redis.url if embedded.redis else None,
        )
        yield embedded
    finally:
        if not keep:
            reset_runtime()
            embedded.stop_started()
            if embedded.postgres and embedded.postgres.started_here:
                os.environ.pop("DATABASE_URL", None)
            if embedded.redis and embedded.redis.started_here:
                os.environ.pop("REDIS_URL", None)
            reset_process_state()
