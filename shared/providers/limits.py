"""Provider rate limits shared by every worker: requests and tokens per minute per model.

A provider's limits (``CHORDLINE_PROVIDER_LIMITS``, e.g. ``openai/gpt-4o-mini=500rpm:
200000tpm,cohere/rerank-v3.5=1000rpm``) are two token buckets per provider and model in
Redis, taken from by one Lua script on Redis's clock before each call: the fleet slows down
before the provider answers 429, instead of every worker finding out on its own. A call
counts one request and, for chat and embeddings, the tokens the provider will count for it
up front (the prompt, estimated, and the most the reply may take), as OpenAI's own limiter
does.

Live turns come first. A call in the re-scoring lane (``rescoring_lane``) may not take the
last ``CHORDLINE_PROVIDER_LIVE_RESERVE`` share (20%) of either bucket: live calls may, so
re-scoring waits while live traffic uses the allowance. A live call that would have to wait
longer than its turn's budget allows is not made: the stage falls back at once, as for any
other wait that does not fit.

A model without a configured limit costs nothing (no round trip). With Redis unreachable
calls go ahead unlimited: the provider's own 429s remain the backstop.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import redis

from shared.config import get_settings
from shared.limit_spec import ModelLimit, parse_limits
from shared.providers.failures import ProviderBudgetExceeded

log = logging.getLogger(__name__)

SETTING = "CHORDLINE_PROVIDER_LIMITS"
Lane = Literal["live", "rescoring"]
_lane: contextvars.ContextVar[Lane] = contextvars.ContextVar("chordline_call_lane", default="live")


@functools.cache
def _limits(text: str) -> dict[str, ModelLimit]:
    return parse_limits(text)


def configured_limit(provider: str, model: str) -> ModelLimit | None:
    return _limits(get_settings().providers.provider_limits).get(f"{provider}/{model}")


@contextmanager
def rescoring_lane() -> Iterator[None]:
    """Calls made inside leave the live reserve of every limited model alone."""
    token = _lane.set("rescoring")
    try:
        yield
    finally:
        _lane.reset(token)


def current_lane() -> Lane:
    return _lane.get()


@dataclass(frozen=True)
class LimitedCall:
    """What a call counts against its model's shared limits."""

    provider: str
    model: str
    tokens: int = 0


def bucket_key(provider: str, model: str) -> str:
    return f"chordline:provider-limit:{provider}/{model}"


# Each bucket holds BURST_S seconds of its minute's allowance: a provider enforces its
# per-minute limits over shorter intervals too, so a minute's requests at once would not
# pass either.
BURST_S = 5.0

# KEYS[1]: the model's buckets. ARGV: rpm (0: none), tpm (0: none), tokens, reserve share,
# burst seconds. Takes one request and the tokens when both buckets keep the reserve; else
# takes nothing and returns how many seconds until they would.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local need, reserve, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local r_cap = math.max(1, rpm / 60 * burst)
local t_cap = math.max(1, tpm / 60 * burst)
local state = redis.call('HMGET', KEYS[1], 'requests', 'tokens', 'ts')
local ts = tonumber(state[3]) or now
local elapsed = math.max(0, now - ts)
local requests = math.min(r_cap, (tonumber(state[1]) or r_cap) + elapsed * rpm / 60)
local tokens = math.min(t_cap, (tonumber(state[2]) or t_cap) + elapsed * tpm / 60)
need = math.min(need, t_cap * (1 - reserve))
local wait = 0
if rpm > 0 and requests - 1 < reserve * r_cap then
  wait = math.max(wait, (1 + reserve * r_cap - requests) / (rpm / 60))
end
if tpm > 0 and need > 0 and tokens - need < reserve * t_cap then
  wait = math.max(wait, (need + reserve * t_cap - tokens) / (tpm / 60))
end
if wait == 0 then
  requests = requests - 1
  tokens = tokens - need
end
redis.call('HSET', KEYS[1], 'requests', tostring(requests), 'tokens', tostring(tokens),
           'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
return tostring(wait)
"""

_scripts: dict[int, Any] = {}


def _take_script() -> Any:
    from shared.redis_conn import get_redis

    client = get_redis()
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_TAKE)
    return script


def try_take(provider: str, model: str, limit: ModelLimit, *, tokens: int, lane: Lane) -> float:
    """One round trip: 0.0 when the call may go now (and it was counted), else the seconds
    until it may."""
    reserve = get_settings().providers.live_reserve if lane == "rescoring" else 0.0
    wait = _take_script()(
        keys=[bucket_key(provider, model)],
        args=[
            limit.rpm or 0,
            limit.tpm or 0,
            max(0, tokens) if limit.tpm else 0,
            reserve,
            BURST_S,
        ],
    )
    return float(wait)


def _describe(limit: ModelLimit) -> str:
    parts = []
    if limit.rpm:
        parts.append(f"{limit.rpm} requests")
    if limit.tpm:
        parts.append(f"{limit.tpm} tokens")
    return " and ".join(parts) + " per minute"


def wait_for_capacity(
    provider: str,
    model: str,
    *,
    tokens: int,
    deadline: float,
    sleep: Any = time.sleep,
    now: Any = time.time,
) -> float:
    """Before a call: wait until the model's shared limits let it go, and count it. Returns
    the seconds waited. Raises ProviderBudgetExceeded, having waited for nothing, when the
    wait would end past ``deadline``."""
    limit = configured_limit(provider, model)
    if limit is None:
        return 0.0
    lane = current_lane()
    waited = 0.0
    while True:
        try:
            wait = try_take(provider, model, limit, tokens=tokens, lane=lane)
        except redis.RedisError as exc:
            log.warning(
                "provider limit not checked: Redis unavailable",
                extra={"action": "provider_limit_skipped", "reason": type(exc).__name__},
            )
            return waited
        if wait <= 0:
            return waited
        if now() + wait > deadline:
            raise ProviderBudgetExceeded(
                f"{provider}/{model}: the fleet's shared limit ({_describe(limit)}, "
                f"{SETTING}) would hold this {lane} call {wait:.1f} s, past the time left "
                f"({max(0.0, deadline - now()):.1f} s); not called"
            )
        log.info(
            "waiting for the shared provider limit",
            extra={"action": "provider_limit_wait", "wait_s": round(wait, 3), "lane": lane},
        )
        sleep(wait)
        waited += wait
