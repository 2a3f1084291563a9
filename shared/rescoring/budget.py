"""A per-tenant rate budget for model calls, in which live traffic comes first.

Each tenant has ``tenant_calls_per_s`` model calls per second (LLM and rerank) to spend, the
rate its provider contracts allow. Live turns never ask this budget for anything: they
never wait on it. Re-scoring draws from a Redis token bucket shared by every rescoring
worker of the tenant, refilled only with what live traffic leaves over:

    refill = tenant_calls_per_s - live calls per second of the tenant (estimated)

The live rate is estimated from the tenant's turn arrivals over the last ``live_window_s``
(each live turn spends about ``live_calls_per_turn`` calls), which leads the calls
themselves, so re-scoring backs off as a burst arrives rather than after it.

And re-scoring takes nothing at all while live turns are hurting, whatever their tenant,
since they share the workers, the database and the machines:

- while more than ``live_backlog_limit`` live messages wait on the turn queues, or
- while live turns take longer than ``live_latency_limit_s``, estimated by Little's law
  from the turns in flight and the arrival rate (both read from indexes).

The bucket is a token bucket evaluated atomically by a Lua script on Redis's own clock, so
any number of worker processes on any number of machines share one budget without having
to agree on time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis
from sqlalchemy import Select, func, select

from shared.config import RescoringSettings, get_settings
from shared.contract import TURN_QUEUES
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.redis_conn import get_redis
from shared.schemas import TurnStatus

BUCKET_KEY = "chordline:rescore:budget:{tenant}"
POLL_S = 0.1  # how often a waiting acquire looks at live load again

# KEYS[1] bucket; ARGV: refill per second, capacity, tokens wanted, key ttl (ms).
# Returns "0" when granted, else the seconds until enough tokens will have accrued.
_BUCKET_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= wanted then
  tokens = tokens - wanted
else
  wait = (wanted - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return tostring(wait)
"""


@dataclass(frozen=True)
class LiveLoad:
    """What live traffic is doing right now, as re-scoring sees it."""

    calls_per_s: float  # of this tenant, estimated
    backlog: int  # live messages waiting on the turn queues, all tenants
    latency_s: float = 0.0  # how long live turns take now, all tenants, estimated


class LiveLoadSource(Protocol):
    def sample(self, tenant_id: str) -> LiveLoad: ...


def estimated_latency_s(*, in_flight: int, arrivals: int, window_s: float) -> float:
    """Little's law: time in the system = turns in it / arrival rate. No arrivals, no load
    (a turn stuck alone is the sweeper's business, not a reason to stop re-scoring)."""
    return in_flight * window_s / arrivals if arrivals else 0.0


def arrivals_query(since: datetime, *, tenant_id: str | None = None) -> Select[int]:
    """Turns created since ``since``, of one tenant or of all. Each count reads an index
    range: (tenant_id, created_at) for one tenant, (created_at) for all of them."""
    query = select(func.count()).select_from(Turn).where(Turn.created_at >= since)
    return query.where(Turn.tenant_id == tenant_id) if tenant_id is not None else query


def open_turns_query() -> Select[int]:
    """Turns in flight, all tenants: read from the partial index of open turns."""
    in_flight = Turn.status.in_([TurnStatus.QUEUED.value, TurnStatus.ROUTED.value])
    return select(func.count()).select_from(Turn).where(in_flight)


class ObservedLiveLoad:
    """Live load read from Postgres (arrivals and turns in flight) and Redis (queue
    lengths), cached for ``live_sample_s`` per tenant so that a busy worker asks rarely."""

    def __init__(self, settings: RescoringSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, LiveLoad]] = {}

    def sample(self, tenant_id: str) -> LiveLoad:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(tenant_id)
            if cached and now - cached[0] < self.settings.live_sample_s:
                return cached[1]
        load = self._observe(tenant_id)
        with self._lock:
            self._cache[tenant_id] = (now, load)
        return load

    def _observe(self, tenant_id: str) -> LiveLoad:
        window = self.settings.live_window_s
        since = datetime.now(UTC) - timedelta(seconds=window)
        with session_scope() as session:
            tenant_arrivals = session.scalar(arrivals_query(since, tenant_id=tenant_id))
            arrivals = session.scalar(arrivals_query(since))
            open_turns = session.scalar(open_turns_query())
        return LiveLoad(
            calls_per_s=(tenant_arrivals or 0) * self.settings.live_calls_per_turn / window,
            backlog=live_backlog(),
            latency_s=estimated_latency_s(
                in_flight=open_turns or 0, arrivals=arrivals or 0, window_s=window
            ),
        )


def live_backlog() -> int:
    """Messages waiting (not yet taken by a worker) on the live turn queues."""
    pipe = get_redis().pipeline(transaction=False)
    for queue in TURN_QUEUES:
        pipe.llen(queue)
    return int(sum(pipe.execute()))


class RateBudget:
    """The re-scoring share of one tenant's model-call budget."""

    def __init__(
        self,
        *,
        tenant_id: str,
        settings: RescoringSettings,
        live: LiveLoadSource,
        client: redis.Redis | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.settings = settings
        self.live = live
        self.client = client or get_redis()
        self._bucket = self.client.register_script(_BUCKET_SCRIPT)

    def spare_rate(self, load: LiveLoad) -> float:
        """Calls per second re-scoring may spend now: what live traffic leaves, or nothing."""
        if load.backlog > self.settings.live_backlog_limit:
            return 0.0
        if load.latency_s > self.settings.live_latency_limit_s:
            return 0.0
        return max(0.0, self.settings.tenant_calls_per_s - load.calls_per_s)

    def try_take(self, calls: int, rate: float) -> float:
        """Take ``calls`` tokens at refill ``rate``; 0.0 when granted, else seconds to wait."""
        capacity = max(float(calls), self.settings.tenant_calls_per_s * self.settings.burst_s)
        ttl_ms = int(max(60.0, capacity / rate * 2) * 1000)
        wait = self._bucket(
            keys=[BUCKET_KEY.format(tenant=self.tenant_id)], args=[rate, capacity, calls, ttl_ms]
        )
        return float(wait)

    def acquire(self, calls: int, *, until: float) -> bool:
        """Wait for ``calls`` tokens until ``until`` (monotonic); False when the time ran out
        first, which tells the caller to yield its worker and come back later."""
        if calls <= 0:
            return True
        while True:
            rate = self.spare_rate(self.live.sample(self.tenant_id))
            wait = self.try_take(calls, rate) if rate > 0 else POLL_S
            if wait <= 0:
                return True
            pause = min(wait, POLL_S) if rate > 0 else POLL_S
            if time.monotonic() + pause > until:
                return False
            time.sleep(pause)


_live: ObservedLiveLoad | None = None
_live_lock = threading.Lock()


def tenant_budget(tenant_id: str) -> RateBudget:
    """The budget of a tenant in this process, sharing one live-load sampler."""
    global _live
    settings = get_settings().rescoring
    with _live_lock:
        if _live is None or _live.settings is not settings:
            _live = ObservedLiveLoad(settings)
        live = _live
    return RateBudget(tenant_id=tenant_id, settings=settings, live=live)
