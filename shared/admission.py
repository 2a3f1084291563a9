"""Admission per tenant: how many turns may be in flight, and how fast new ones may come.

Every process that accepts turns shares three Redis keys per tenant, read and written by
one Lua script each (Redis's own clock, so processes on many machines need not agree on
time):

- ``in-flight``: a sorted set of the tenant's admitted turns, scored by when the entry
  expires (accepted + the longest a turn can live, see ``turn_lifetime_s``). A turn's end
  removes its entry; an end that never reached Redis (a crash between the commit and the
  release) frees its slot when the entry expires. No bare counter that can drift.
- ``bucket``: a token bucket (``turns_per_s``, ``burst``).
- ``held``: with ``over_limit = hold``, the turns accepted over a limit, scored by their
  acceptance time. Postgres holds them too (status ``held``); the periodic relay makes the
  set follow Postgres, so a lost Redis entry cannot strand a turn.

With ``CHORDLINE_TURN_FLEET_MAX_IN_FLIGHT`` set, two more keys count every tenant's turns in
flight and the tenants that have some: once the fleet is full, a tenant is admitted only
below its fair share of it (the cap over the tenants with turns in flight).

``admit`` is enqueue_turn's one round trip. A turn's end releases its slot in the round
trip that announces the end on its reply stream, and the same script hands the freed
capacity to the tenant's oldest held turns, which are then promoted in Postgres and
published.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.config import get_settings
from shared.db.direct import direct_connection
from shared.db.tenants import recent_tenant_settings
from shared.db.turns import promote_held
from shared.dispatch import publish_committed
from shared.errors import AdmissionRefused
from shared.redis_conn import get_redis
from shared.schemas import Admission
from shared.streaming import ReplyStream, queue_cancel, queue_end

log = logging.getLogger(__name__)

FLEET_SETTING = "CHORDLINE_TURN_FLEET_MAX_IN_FLIGHT"
# How long a tenant's refusal tells the caller to wait when its in-flight cap is the limit:
# turns take seconds, so a slot frees within about a second at any useful cap.
IN_FLIGHT_RETRY_S = 1.0
# Held turns Redis knows of and Postgres does not are dropped once they are this old: the
# turn may simply not be committed yet.
HELD_GRACE_S = 10.0
MAX_PROMOTED = 100  # turns one release promotes at most


def in_flight_key(tenant: str) -> str:
    return f"chordline:admission:tenant:{tenant}:in-flight"


def bucket_key(tenant: str) -> str:
    return f"chordline:admission:tenant:{tenant}:bucket"


def held_key(tenant: str) -> str:
    return f"chordline:admission:tenant:{tenant}:held"


FLEET_KEY = "chordline:admission:fleet:in-flight"  # every tenant's admitted turns
ACTIVE_KEY = "chordline:admission:fleet:tenants"  # tenants with turns in flight


def keys(tenant: str) -> list[str]:
    return [in_flight_key(tenant), bucket_key(tenant), held_key(tenant), FLEET_KEY, ACTIVE_KEY]


def fleet_cap() -> int:
    return get_settings().turn.fleet_max_in_flight or 0


def turn_lifetime_s() -> float:
    """The longest a turn can stay in flight: every attempt's stage deadline, and a sweep."""
    settings = get_settings()
    return (
        settings.turn.stage_deadline_s * settings.turn.max_attempts
        + settings.celery.sweeper_interval_s
        + settings.turn.budget_s
    )


def limited(policy: Admission) -> bool:
    """Whether the tenant's turns go through admission: it has a limit, or the fleet has."""
    return policy.max_in_flight is not None or policy.turns_per_s is not None or fleet_cap() > 0


# The token bucket, as both scripts read it: ``tokens`` after refilling to now. And the
# fleet's share: with a fleet cap, a tenant is over its share once the fleet is full and the
# tenant has at least cap / (tenants with turns in flight) of them.
_BUCKET = """
local function over_fair_share(fleet_cap, tenant, in_flight, now)
  if fleet_cap <= 0 then return false, 0, 0 end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  local fleet = redis.call('ZCARD', KEYS[4])
  if fleet < fleet_cap then return false, fleet, 0 end
  local active = redis.call('ZCARD', KEYS[5])
  if not redis.call('ZSCORE', KEYS[5], tenant) then active = active + 1 end
  local share = math.max(1, math.floor(fleet_cap / active))
  return in_flight >= share, fleet, share
end
local function count_in_fleet(fleet_cap, tenant, id, expires)
  if fleet_cap <= 0 then return end
  redis.call('ZADD', KEYS[4], expires, id)
  redis.call('ZADD', KEYS[5], 'GT', expires, tenant)
  redis.call('EXPIRE', KEYS[4], 3600)
  redis.call('EXPIRE', KEYS[5], 3600)
end
local function bucket_tokens(key, now, rate, burst)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  return math.min(burst, tokens + math.max(0, now - ts) * rate)
end
local function save_bucket(key, now, rate, burst, tokens)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', key, math.ceil(burst / rate) + 60)
end
"""

# KEYS: see ``keys``. ARGV: turn id, order score (acceptance time), in-flight cap (0: none),
# rate per second (0: none), burst, lifetime s, hold (1/0), hold limit, hold ttl s, retry
# hint for a cap, fleet cap (0: none), tenant. Returns {outcome, limit, wait s, in flight,
# held, fleet, share}; outcome is admitted, held or refused; limit names what was reached.
_ADMIT = (
    _BUCKET
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id = ARGV[1]
local cap, rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lifetime, hold, hold_limit = tonumber(ARGV[6]), ARGV[7] == '1', tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], id) then return {'admitted', '', '0', '0', '0', '0', '0'} end
if redis.call('ZSCORE', KEYS[3], id) then return {'held', '', '0', '0', '0', '0', '0'} end
local in_flight = redis.call('ZCARD', KEYS[1])
local held = redis.call('ZCARD', KEYS[3])
local fleet_cap, tenant = tonumber(ARGV[11]), ARGV[12]
local over_share, fleet, share = over_fair_share(fleet_cap, tenant, in_flight, now)
local limit, wait, tokens = '', 0, 0
if hold and held > 0 then
  limit = 'queue'
elseif cap > 0 and in_flight >= cap then
  limit = 'max_in_flight'
  wait = tonumber(ARGV[10])
elseif over_share then
  limit = 'fleet'
  wait = tonumber(ARGV[10])
elseif rate > 0 then
  tokens = bucket_tokens(KEYS[2], now, rate, burst)
  if tokens < 1 then
    limit = 'turns_per_s'
    wait = (1 - tokens) / rate
  end
end
if limit == '' then
  if rate > 0 then save_bucket(KEYS[2], now, rate, burst, tokens - 1) end
  redis.call('ZADD', KEYS[1], now + lifetime, id)
  redis.call('EXPIRE', KEYS[1], math.ceil(lifetime) + 60)
  count_in_fleet(fleet_cap, tenant, id, now + lifetime)
  return {'admitted', '', '0', tostring(in_flight + 1), tostring(held), '0', '0'}
end
if hold and held < hold_limit then
  redis.call('ZADD', KEYS[3], ARGV[2], id)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[9]))
  return {'held', limit, tostring(wait), tostring(in_flight), tostring(held + 1), '0', '0'}
end
if hold then
  limit = 'hold_limit'
  wait = math.max(wait, tonumber(ARGV[10]))
  if rate > 0 then wait = math.max(wait, held / rate) end
end
return {'refused', limit, tostring(wait), tostring(in_flight), tostring(held), tostring(fleet),
        tostring(share)}
"""
)

# KEYS: see ``keys``. ARGV: ended turn id ('' for none), cap, rate, burst, lifetime s, most
# to promote, sync (1/0), grace s, fleet cap, tenant, then with sync the tenant's held turns
# as Postgres has them, oldest first, as id and score pairs.
# Frees the ended turn's slot, and moves the oldest held turns that now fit into the
# in-flight set. Returns {wait s, promoted ids...}: wait is how long until the bucket lets
# the next held turn in (0: nothing waits on the bucket).
_RELEASE = (
    _BUCKET
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lifetime, most = tonumber(ARGV[5]), tonumber(ARGV[6])
local fleet_cap, tenant = tonumber(ARGV[9]), ARGV[10]
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('ZREM', KEYS[5], tenant) end
local promoted = {}
if ARGV[7] == '1' then
  local listed = {}
  for i = 11, #ARGV, 2 do
    local id = ARGV[i]
    listed[id] = true
    if redis.call('ZSCORE', KEYS[1], id) then
      redis.call('ZREM', KEYS[3], id)
      table.insert(promoted, id)
    else
      redis.call('ZADD', KEYS[3], 'NX', ARGV[i + 1], id)
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[8]))) do
    if not listed[id] then redis.call('ZREM', KEYS[3], id) end
  end
end
if redis.call('ZCARD', KEYS[3]) == 0 then return {'0', unpack(promoted)} end
local tokens, wait, took = burst, 0, false
if rate > 0 then tokens = bucket_tokens(KEYS[2], now, rate, burst) end
while #promoted < most do
  local first = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not first then break end
  local in_flight = redis.call('ZCARD', KEYS[1])
  if cap > 0 and in_flight >= cap then break end
  if over_fair_share(fleet_cap, tenant, in_flight, now) then break end
  if rate > 0 then
    if tokens < 1 then
      wait = (1 - tokens) / rate
      break
    end
    tokens = tokens - 1
    took = true
  end
  redis.call('ZREM', KEYS[3], first)
  redis.call('ZADD', KEYS[1], now + lifetime, first)
  count_in_fleet(fleet_cap, tenant, first, now + lifetime)
  table.insert(promoted, first)
end
if took then save_bucket(KEYS[2], now, rate, burst, tokens) end
redis.call('EXPIRE', KEYS[1], math.ceil(lifetime) + 60)
return {tostring(wait), unpack(promoted)}
"""
)

_scripts: dict[tuple[int, str], Any] = {}


def _script(client: redis.Redis, source: str) -> Any:
    """The script registered on this client (EVALSHA, loaded once)."""
    key = (id(client), source)
    script = _scripts.get(key)
    if script is None:
        script = _scripts[key] = client.register_script(source)
    return script


@dataclass(frozen=True)
class Admitted:
    held: bool  # accepted over a limit: written to Postgres, dispatched when there is room
    wait_s: float = 0.0  # held by the rate: when the bucket lets it in


def admit(tenant: str, turn_id: str, policy: Admission, *, order: float) -> Admitted:
    """One round trip: take a slot and a token for the turn, or hold it, or refuse.

    Raises AdmissionRefused (retry_after_s set) when the tenant is over a limit and its
    policy refuses, or its held turns are at ``hold_limit``."""
    outcome, limit, wait, in_flight, held, fleet, share = _script(get_redis(), _ADMIT)(
        keys=keys(tenant),
        args=[
            turn_id,
            repr(order),
            policy.max_in_flight or 0,
            policy.turns_per_s or 0,
            policy.burst,
            turn_lifetime_s(),
            1 if policy.over_limit == "hold" else 0,
            policy.hold_limit,
            math.ceil(policy.hold_max_s * 2 + 60),
            IN_FLIGHT_RETRY_S,
            fleet_cap(),
            tenant,
        ],
    )
    wait_s = float(wait)
    if outcome == "admitted":
        return Admitted(held=False)
    if outcome == "held":
        return Admitted(held=True, wait_s=wait_s)
    raise _refusal(
        tenant,
        policy,
        limit,
        wait_s=wait_s,
        counts=(int(in_flight), int(held), int(fleet), int(share)),
    )


def _refusal(
    tenant: str, policy: Admission, limit: str, *, wait_s: float, counts: tuple[int, int, int, int]
) -> AdmissionRefused:
    in_flight, held, fleet, share = counts
    retry = max(0.1, wait_s)
    if limit == "fleet":
        return AdmissionRefused(
            FLEET_SETTING,
            f"the fleet has {fleet} turns in flight, its limit, and tenant {tenant} has "
            f"{in_flight}, at or over its fair share ({share})",
            retry_after_s=retry,
        )
    if limit == "max_in_flight":
        problem = f"tenant {tenant} has {in_flight} turns in flight, its limit"
    elif limit == "turns_per_s":
        problem = (
            f"tenant {tenant} is sending faster than {policy.turns_per_s:g} turns/s "
            f"(burst {policy.burst})"
        )
    else:
        problem = f"tenant {tenant} already holds {held} turns over its limits, its limit"
    return AdmissionRefused(f"admission.{limit}", problem, retry_after_s=retry)


def forget(tenant: str, turn_id: str) -> None:
    """Undo an admission whose turn was not written (refused by Postgres, or an idempotent
    retry of an earlier turn). Best effort: an entry left behind expires."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.zrem(in_flight_key(tenant), turn_id)
        pipe.zrem(held_key(tenant), turn_id)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning(
            "admission not undone",
            extra={
                "action": "admission_undo_failed",
                "turn_id": turn_id,
                "tenant_id": tenant,
                "reason": type(exc).__name__,
            },
        )


@dataclass(frozen=True)
class Released:
    promoted: list[str]  # held turns that may run now: promote them in Postgres
    wait_s: float  # held turns wait on the bucket for this long (0: none do)


def release_args(
    tenant: str,
    policy: Admission,
    ended_turn: str = "",
    *,
    held: list[tuple[str, float]] | None = None,
) -> list[Any]:
    args: list[Any] = [
        ended_turn,
        policy.max_in_flight or 0,
        policy.turns_per_s or 0,
        policy.burst,
        turn_lifetime_s(),
        MAX_PROMOTED,
        1 if held is not None else 0,
        HELD_GRACE_S,
        fleet_cap(),
        tenant,
    ]
    for turn_id, order in held or []:
        args.extend([turn_id, repr(order)])
    return args


# Redis names scripts by their SHA-1 (an identifier here, not a safeguard)
_RELEASE_SHA = hashlib.sha1(_RELEASE.encode(), usedforsecurity=False).hexdigest()


def queue_release(pipe: Any, tenant: str, policy: Admission, ended_turn: str) -> None:
    """Add the release of an ended turn's slot to a pipeline, by the script's SHA alone (a
    Script object in a redis-py pipeline would cost a SCRIPT EXISTS round trip of its own,
    and EVAL would send the whole script every time); see ``end_in_redis`` for a Redis that
    does not know it yet."""
    tenant_keys = keys(tenant)
    pipe.evalsha(
        _RELEASE_SHA, len(tenant_keys), *tenant_keys, *release_args(tenant, policy, ended_turn)
    )


def released_from(reply: Any) -> Released:
    values = list(reply or ["0"])
    return Released(promoted=[str(v) for v in values[1:]], wait_s=float(values[0]))


def release(
    tenant: str,
    policy: Admission,
    *,
    ended_turn: str = "",
    held: list[tuple[str, float]] | None = None,
) -> Released:
    """Free an ended turn's slot (if any) and admit the oldest held turns that fit. With
    ``held`` (the tenant's held turns as Postgres has them), the held set follows Postgres
    first, and held turns admitted before a crash are returned for promotion again."""
    reply = _script(get_redis(), _RELEASE)(
        keys=keys(tenant), args=release_args(tenant, policy, ended_turn, held=held)
    )
    return released_from(reply)


def end_in_redis(
    turn_id: str,
    status: str,
    *,
    tenant: str,
    policy: Admission,
    cancel_reason: str | None = None,
    stream: ReplyStream | None = None,
) -> Released | None:
    """A turn's end in Redis, in one round trip: the end entry on its reply stream (a cancel
    marker first, for a cancelled turn; after the last tokens still on their way, when the
    agent's ``stream`` is given) and the release of its admission slot. Best effort:
    readers also find the end in Postgres, and a slot not released expires. Returns what the
    release let go, if the tenant has limits."""
    releasing = limited(policy)

    def also(pipe: Any) -> None:
        if releasing:
            queue_release(pipe, tenant, policy, turn_id)

    try:
        if stream is not None and cancel_reason is None:
            replies = stream.end(status, also=also)  # a failure is logged there
            if replies is None:
                return None
        else:
            pipe = get_redis().pipeline(transaction=False)
            if cancel_reason is not None:
                queue_cancel(pipe, turn_id, cancel_reason)
            else:
                queue_end(pipe, turn_id, status)
            own = len(pipe)
            also(pipe)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies[:own]:
                if isinstance(reply, Exception):
                    raise reply
            replies = replies[own:]
        return _settled_release(replies[0], tenant, policy, turn_id) if releasing else None
    except Exception as exc:  # best effort, as announcing an end always was
        log.warning(
            "end of turn not streamed",
            extra={
                "action": "stream_end_failed",
                "turn_id": turn_id,
                "tenant_id": tenant,
                "reason": type(exc).__name__,
            },
        )
        return None


def _settled_release(reply: Any, tenant: str, policy: Admission, turn_id: str) -> Released:
    if isinstance(reply, redis.exceptions.NoScriptError):
        # Redis does not know the script yet (first use, or after a restart): load it
        return release(tenant, policy, ended_turn=turn_id)
    if isinstance(reply, Exception):
        raise reply
    return released_from(reply)


def let_go(tenant: str, released: Released | None) -> list[str]:
    """Promote the held turns a release admitted, in Postgres, and publish those whose
    conversation is free (the others wait behind their conversation's turn); a release that
    waits on the bucket is tried again when it refills. Returns the turns published.

    If this process dies half way, the relay finds the turns still held in Postgres and
    already admitted in Redis, and promotes them (see ``release_held_turns``)."""
    if released is None:
        return []
    published: list[str] = []
    if released.promoted:
        with direct_connection() as conn:
            ready = promote_held(
                conn, released.promoted, stage_deadline_s=get_settings().turn.stage_deadline_s
            )
        # their outbox rows are committed: one the broker refuses, the relay sends later
        published = publish_committed(ready)
        if promoted_count := len(released.promoted):
            log.info(
                "held turns let go",
                extra={
                    "action": "held_turns_released",
                    "tenant_id": tenant,
                    "promoted": promoted_count,
                    "published": len(published),
                },
            )
    if released.wait_s > 0:
        schedule_release(tenant, released.wait_s)
    return published


def let_go_safely(tenant: str, released: Released | None) -> None:
    """``let_go`` after a turn has ended: a failure here must not fail (and retry) the task
    that ended it; the relay lets the held turns go within seconds."""
    if released is None or not (released.promoted or released.wait_s):
        return
    try:
        let_go(tenant, released)
    except Exception as exc:
        log.warning(
            "held turns not let go; the relay will",
            extra={
                "action": "held_release_failed",
                "tenant_id": tenant,
                "reason": type(exc).__name__,
            },
        )


_timers: dict[str, threading.Timer] = {}
_timers_lock = threading.Lock()


def schedule_release(tenant: str, after_s: float) -> None:
    """Let the tenant's held turns go once its bucket has refilled (one timer per tenant
    and process; the relay does the same every couple of seconds, should this process
    end first)."""
    with _timers_lock:
        if tenant in _timers:
            return
        timer = threading.Timer(max(0.01, after_s), _release_due, args=(tenant,))
        timer.daemon = True
        _timers[tenant] = timer
    timer.start()


def _release_due(tenant: str) -> None:
    with _timers_lock:
        _timers.pop(tenant, None)
    try:
        policy = recent_tenant_settings.get(tenant).admission
        let_go(tenant, release(tenant, policy))
    except Exception as exc:  # the relay lets them go later
        log.warning(
            "held turns not let go",
            extra={
                "action": "held_release_failed",
                "tenant_id": tenant,
                "reason": type(exc).__name__,
            },
        )


_ENDED_AMONG = """
    SELECT id::text, status IN ('completed', 'failed', 'cancelled') FROM turns
    WHERE id = ANY(%(ids)s::uuid[])
"""


def drop_ended_from_in_flight(tenant: str) -> int:
    """Drop the in-flight entries of turns that have ended in Postgres (their release never
    reached Redis), and of turns admitted over ``HELD_GRACE_S`` ago that Postgres never
    received (their process died before the commit). Returns how many were dropped."""
    client = get_redis()
    raw: Any = client.zrange(in_flight_key(tenant), 0, -1, withscores=True)
    entries = [(str(member), float(expires)) for member, expires in raw]
    if not entries:
        return 0
    with direct_connection() as conn:
        rows = conn.execute(_ENDED_AMONG, {"ids": [m for m, _ in entries]}).fetchall()
    ended = {row[0]: bool(row[1]) for row in rows}
    # an entry's score is when it expires: it was admitted at score - lifetime
    admitted_long_ago = time.time() + turn_lifetime_s() - HELD_GRACE_S
    stale = [
        member for member, expires in entries if ended.get(member, expires < admitted_long_ago)
    ]
    if stale:
        pipe = client.pipeline(transaction=False)
        pipe.zrem(in_flight_key(tenant), *stale)
        pipe.zrem(FLEET_KEY, *stale)
        pipe.execute()
    return len(stale)
