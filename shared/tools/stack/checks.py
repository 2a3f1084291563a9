"""What `chordline doctor` checks besides the model providers: the stack a turn runs on.

In order, each a ``Check`` with its outcome and, when it fails, what to do:

- Postgres reachable (DATABASE_URL, or the embedded server running on the data dir), its
  schema at the latest migration, pgvector installed;
- Redis reachable (REDIS_URL, or the embedded one), ``maxmemory-policy noeviction``, and
  persistence (AOF or RDB snapshots) configured;
- a worker answering on each queue a turn needs (orchestrator, researcher, merge, agents)
  and on ``maintenance`` (Celery's ``inspect active_queues``, with a short timeout);
- beat alive: the sweeper it schedules wrote its heartbeat recently (shared/heartbeat.py).

Nothing is started: a server that does not run is reported, not launched. Every connection
tries once, with a short timeout. Checks that depend on a server that cannot be reached are
reported as failed without trying, and say why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from shared.config import Settings
from shared.connectivity import (
    DATABASE_SETTING,
    REDIS_SETTING,
    as_unreachable,
    postgres_endpoint,
    probe_postgres,
    probe_redis,
    redis_client,
    redis_endpoint,
)
from shared.contract import MAINTENANCE_QUEUE
from shared.errors import ChordlineError
from shared.tools.stack.procfile import TURN_PROCESSES

WORKER_QUEUES = (*TURN_PROCESSES, MAINTENANCE_QUEUE)
CHECK_TIMEOUT_S = 3.0
WORKER_REPLY_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # not run, because a check it depends on failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """The server a setting names, or the embedded one running on the data dir."""

    setting: str
    url: str | None
    embedded: bool

    @property
    def label(self) -> str:
        return f"embedded ({self.setting} unset)" if self.embedded else self.setting


class Failed(ChordlineError):
    """A check failed; carries what to do about it."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.fix = fix


def _targets(settings: Settings) -> tuple[Target, Target]:
    from shared.tools.stack.embedded import running_postgres_url, running_redis_url

    postgres = (
        Target(DATABASE_SETTING, settings.database_url, False)
        if settings.database_url
        else Target(DATABASE_SETTING, running_postgres_url(settings.data_dir), True)
    )
    redis_target = (
        Target(REDIS_SETTING, settings.redis_url, False)
        if settings.redis_url
        else Target(REDIS_SETTING, running_redis_url(settings.data_dir), True)
    )
    return postgres, redis_target


def _run(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, True, probe())
    except Failed as exc:
        return Check(name, False, str(exc), exc.fix)
    except Exception as exc:  # a driver's error mid-check: reported, never raised
        return Check(name, False, _describe(exc))


def _describe(exc: Exception) -> str:
    """A driver's error as one line: a connection failure names its setting."""
    lines = str(as_unreachable(exc) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _skipped(name: str, because: str, fix: str) -> Check:
    return Check(name, False, f"not checked: {because}", fix, skipped=True)


# --------------------------------------------------------------------------- Postgres


def _not_running(target: Target, server: str) -> Failed:
    return Failed(
        f"{target.setting} is not set and no embedded {server} runs on the data dir",
        f"set {target.setting}, or start the stack with `chordline up`",
    )


def _postgres_reachable(target: Target) -> str:
    if target.url is None:
        raise _not_running(target, "Postgres")
    try:
        version = probe_postgres(target.url, timeout_s=CHECK_TIMEOUT_S)
    except ChordlineError as exc:
        raise Failed(str(exc), f"start Postgres there, or fix {target.setting}") from None
    return f"{target.label}: {postgres_endpoint(target.url)} answers (PostgreSQL {version})"


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    from shared.db.direct import libpq_url

    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=3) as conn:
        return list(conn.execute(sql).fetchall())


def _schema_at_head(url: str) -> str:
    from shared.db.migrations import schema_heads

    heads = schema_heads()
    try:
        current = {str(row[0]) for row in _query(url, "SELECT version_num FROM alembic_version")}
    except Exception:  # no alembic_version table: never migrated
        current = set()
    if current == heads:
        return f"schema at the latest revision ({', '.join(sorted(heads))})"
    shown = ", ".join(sorted(current)) or "none"
    raise Failed(
        f"schema at revision {shown}, the latest is {', '.join(sorted(heads))}",
        "run `chordline migrate`",
    )


def _pgvector(url: str) -> str:
    installed = _query(url, "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    if installed:
        return f"pgvector {installed[0][0]} installed"
    available = _query(url, "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    if available:
        raise Failed("pgvector is available but not installed", "run `chordline migrate`")
    raise Failed(
        "pgvector is not available on this server",
        "install the pgvector extension on the server, then run `chordline migrate`",
    )


def postgres_checks(target: Target) -> list[Check]:
    reachable = _run("postgres", lambda: _postgres_reachable(target))
    if not reachable.ok or target.url is None:
        because, fix = "Postgres unreachable", f"fix {target.setting} first"
        return [reachable, *(_skipped(name, because, fix) for name in ("migrations", "pgvector"))]
    url = target.url
    return [
        reachable,
        _run("migrations", lambda: _schema_at_head(url)),
        _run("pgvector", lambda: _pgvector(url)),
    ]


# --------------------------------------------------------------------------- Redis


def _redis_reachable(target: Target) -> str:
    if target.url is None:
        raise _not_running(target, "Redis")
    try:
        probe_redis(target.url, timeout_s=CHECK_TIMEOUT_S)
    except ChordlineError as exc:
        raise Failed(str(exc), f"start Redis there, or fix {target.setting}") from None
    return f"{target.label}: {redis_endpoint(target.url)} answers"


def _config(client: redis.Redis, name: str) -> str | None:
    """A CONFIG GET value, or None when the server refuses CONFIG (managed Redis)."""
    try:
        return str(client.config_get(name).get(name, ""))
    except redis.ResponseError:
        return None


def _eviction_policy(client: redis.Redis) -> str:
    policy = _config(client, "maxmemory-policy")
    if policy == "noeviction":
        return "maxmemory-policy noeviction"
    if policy is None:
        raise Failed(
            "cannot read maxmemory-policy (CONFIG GET refused)",
            "make sure the server's maxmemory-policy is noeviction",
        )
    raise Failed(
        f"maxmemory-policy is {policy!r}: a full Redis would drop queued turns",
        "set maxmemory-policy noeviction (workers refuse to start without it)",
    )


def _persistence(client: redis.Redis) -> str:
    appendonly, save = _config(client, "appendonly"), _config(client, "save")
    if appendonly is None or save is None:
        raise Failed(
            "cannot read appendonly / save (CONFIG GET refused)",
            "make sure the server persists its data (AOF or RDB snapshots)",
        )
    kinds = [f"AOF ({_config(client, 'appendfsync')})"] if appendonly == "yes" else []
    kinds += [f"RDB snapshots ({save})"] if save.strip() else []
    if kinds:
        return " and ".join(kinds)
    raise Failed(
        "no persistence (appendonly no, save empty): a restart loses every queued turn",
        "set appendonly yes (or an RDB save schedule)",
    )


def _workers_by_queue(url: str, settings: Settings) -> dict[str, list[str]]:
    """Worker names per queue, from the workers that answer within the timeout."""
    from shared.contract import make_celery

    app = make_celery("chordline-doctor", settings.model_copy(update={"redis_url": url}))
    try:
        replies = app.control.inspect(timeout=WORKER_REPLY_TIMEOUT_S).active_queues() or {}
    finally:
        app.close()
    by_queue: dict[str, list[str]] = {}
    for worker, queues in replies.items():
        for queue in queues or []:
            by_queue.setdefault(str(queue.get("name")), []).append(str(worker))
    return by_queue


def _worker_check(queue: str, by_queue: dict[str, list[str]]) -> Check:
    workers = sorted(by_queue.get(queue, []))
    if workers:
        return Check(f"worker {queue}", True, f"answered by {', '.join(workers)}")
    return Check(
        f"worker {queue}",
        False,
        f"no worker answers on queue {queue} (within {WORKER_REPLY_TIMEOUT_S:g} s)",
        f"start one: `chordline proc {queue}` (or `chordline up`)",
    )


def _beat_alive(client: redis.Redis) -> str:
    from shared.heartbeat import heartbeat_ttl_s, last_sweeper_heartbeat

    last = last_sweeper_heartbeat(client)
    if last is not None:
        return f"the sweeper it schedules ran {max(0.0, time.time() - last):.0f} s ago"
    raise Failed(
        f"no sweeper heartbeat in the last {heartbeat_ttl_s()} s: stuck turns are not "
        "recovered, outbox intents not re-sent",
        "run `chordline proc beat`, and a maintenance worker (`chordline proc maintenance`)",
    )


def redis_checks(target: Target, settings: Settings) -> list[Check]:
    reachable = _run("redis", lambda: _redis_reachable(target))
    later = ("eviction policy", "persistence", *(f"worker {q}" for q in WORKER_QUEUES), "beat")
    if not reachable.ok or target.url is None:
        because, fix = "Redis unreachable", f"fix {target.setting} first"
        return [reachable, *(_skipped(name, because, fix) for name in later)]
    url = target.url
    client = redis_client(url, timeout_s=CHECK_TIMEOUT_S)
    try:
        checks = [
            reachable,
            _run("eviction policy", lambda: _eviction_policy(client)),
            _run("persistence", lambda: _persistence(client)),
        ]
        try:
            by_queue = _workers_by_queue(url, settings)
            checks += [_worker_check(queue, by_queue) for queue in WORKER_QUEUES]
        except Exception as exc:  # the broker failed mid-check: reported, never raised
            because = _describe(exc)
            checks += [_skipped(f"worker {q}", because, "") for q in WORKER_QUEUES]
        checks.append(_run("beat", lambda: _beat_alive(client)))
        return checks
    finally:
        client.close()


def stack_checks(settings: Settings) -> list[Check]:
    """Every check of the stack, in order; none raises."""
    postgres, redis_target = _targets(settings)
    return [*postgres_checks(postgres), *redis_checks(redis_target, settings)]
