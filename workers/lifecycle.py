"""Per-process resources and start-up checks, in worker lifecycle hooks."""

from __future__ import annotations

import gc
import logging.config
import time
from typing import Any, NoReturn

import redis
from celery import signals

from shared.config import get_settings
from shared.connectivity import redis_unreachable
from shared.logs import logging_config
from shared.providers.registry import warm_providers
from shared.redis_conn import get_redis
from shared.runtime import reset_runtime
from workers import broker_guard

log = logging.getLogger(__name__)


@signals.setup_logging.connect
def _configure_logging(**_: Any) -> None:
    settings = get_settings()
    config = logging_config(level=settings.log_level, fmt=settings.log_format)
    # Connecting this signal stops Celery from configuring any logging of its own, and the
    # worker then redirects stderr into a logger: without a root handler, Celery's own
    # warnings and errors (a refused pickle message, a task that raised, a lost
    # connection) would vanish. They go to the same stderr handler, as JSON.
    config.setdefault("root", {"level": "WARNING", "handlers": ["stderr"]})
    logging.config.dictConfig(config)


@signals.worker_process_init.connect
def _fresh_resources_after_fork(**_: Any) -> None:
    # A forked child must not use its parent's sockets (SQLAlchemy pooling docs): it starts
    # a runtime of its own (shared/runtime.py), whose engine, pools, Redis client and
    # providers are made on first use in this process; the parent's are left alone.
    reset_runtime()
    freeze_startup_objects()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _close_resources(**_: Any) -> None:
    # Connections closed, the dispatcher and stream writer flushed, before the process ends.
    reset_runtime()


@signals.worker_ready.connect
def _freeze_after_startup(**_: Any) -> None:
    freeze_startup_objects()


def freeze_startup_objects() -> None:
    """Move everything made at start-up (modules, the Celery app, models, clients: about
    150,000 objects) out of the cyclic garbage collector's view. Python's full collections
    scan every tracked object with the GIL held; in a worker they took 70-130 ms each, and
    every task of the process waited that long. Frozen objects are never scanned (the
    technique CPython documents for preforking servers, gc.freeze)."""
    gc.collect()
    gc.freeze()


POLICY_CHECK_WAIT_S = 30.0


def _eviction_policy() -> str:
    """Redis's maxmemory-policy, waiting a while for a Redis that is (re)starting.

    Celery logs and ignores what a worker_init handler raises, so a Redis that cannot be
    reached here must end the worker (exit 75, EX_TEMPFAIL: its supervisor starts it
    again), or the worker would run without the check.
    """
    deadline = time.monotonic() + POLICY_CHECK_WAIT_S
    waiting = False
    while True:
        try:
            return str(get_redis().config_get("maxmemory-policy").get("maxmemory-policy", ""))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            unreachable = redis_unreachable(get_settings().redis_url, exc)
            if time.monotonic() > deadline:
                _refuse(f"{unreachable} for {POLICY_CHECK_WAIT_S:g} s", code=75)
            if not waiting:  # one line while Redis may be (re)starting, not one a second
                waiting = True
                log.warning(
                    f"{unreachable}; waiting up to {POLICY_CHECK_WAIT_S:g} s for it",
                    extra={"action": "worker_waits_for_redis"},
                )
            time.sleep(1.0)


def _refuse(reason: str, *, code: int) -> NoReturn:
    """End the worker before it consumes anything, with one line saying why."""
    message = f"refusing to start: {reason}"
    log.error(message, extra={"action": "worker_refused"})
    raise SystemExit(code)


def refuse_evicting_redis() -> None:
    """A Redis that may evict keys can silently drop queued turns and chord counters."""
    try:
        policy = _eviction_policy()
    except redis.ResponseError:  # managed Redis that forbids CONFIG: trust, but say so
        log.warning(
            "cannot read maxmemory-policy; make sure it is noeviction",
            extra={"action": "redis_policy_unknown"},
        )
        return
    if policy != "noeviction":
        _refuse(
            f"Redis maxmemory-policy is {policy!r}. With eviction, Redis may silently drop "
            "queued tasks and chord state; set maxmemory-policy noeviction so that a full "
            "Redis fails loudly instead.",
            code=78,
        )


@signals.worker_init.connect
def _check_broker(**_: Any) -> None:
    refuse_evicting_redis()


@signals.worker_init.connect
def _survive_broker_restarts(**_: Any) -> None:
    # A lost Redis connection must end in a reconnect, never in the worker exiting
    # (workers/broker_guard.py says why and what happens to unacknowledged messages).
    broker_guard.install()


@signals.celeryd_after_setup.connect
def _warm_providers(**_: Any) -> None:
    # SDK imports and HTTP clients are made before the first task, not inside a turn's
    # budget (logging is set up by now). A prefork child drops them and makes its own.
    warm_providers()
