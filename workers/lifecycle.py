"""Per-process resources and start-up checks, in worker lifecycle hooks."""

from __future__ import annotations

import logging.config
import sys
from typing import Any

import redis
from celery import signals

from shared.config import get_settings
from shared.db.session import dispose_engine
from shared.logs import logging_config
from shared.providers.registry import reset_providers, warm_providers
from shared.redis_conn import get_redis, reset_redis

log = logging.getLogger(__name__)


@signals.setup_logging.connect
def _configure_logging(**_: Any) -> None:
    settings = get_settings()
    logging.config.dictConfig(logging_config(level=settings.log_level, fmt=settings.log_format))


@signals.worker_process_init.connect
def _fresh_resources_after_fork(**_: Any) -> None:
    # A forked child must not use its parent's sockets (SQLAlchemy pooling docs): drop
    # them; the engine and the Redis pool are made again on first use in this process.
    dispose_engine()
    reset_redis()
    reset_providers()  # their HTTP clients too


def refuse_evicting_redis() -> None:
    """A Redis that may evict keys can silently drop queued turns and chord counters."""
    try:
        policy = get_redis().config_get("maxmemory-policy").get("maxmemory-policy", "")
    except redis.ResponseError:  # managed Redis that forbids CONFIG: trust, but say so
        log.warning(
            "cannot read maxmemory-policy; make sure it is noeviction",
            extra={"action": "redis_policy_unknown"},
        )
        return
    if policy != "noeviction":
        message = (
            f"refusing to start: Redis maxmemory-policy is {policy!r}. With eviction, Redis "
            "may silently drop queued tasks and chord state; set maxmemory-policy "
            "noeviction so that a full Redis fails loudly instead."
        )
        log.error(message, extra={"action": "worker_refused"})
        print(message, file=sys.stderr)
        raise SystemExit(78)


@signals.worker_init.connect
def _check_broker(**_: Any) -> None:
    refuse_evicting_redis()


@signals.celeryd_after_setup.connect
def _warm_providers(**_: Any) -> None:
    # SDK imports and HTTP clients are made before the first task, not inside a turn's
    # budget (logging is set up by now). A prefork child drops them and makes its own.
    warm_providers()
