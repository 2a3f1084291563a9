"""Calling a provider within a turn's budget: short timeouts, few retries, never a long wait.

The SDKs' own retries are off (they would wait up to minutes). Here:

- each attempt gets ``min(request timeout, time left before the deadline)``;
- only transient failures (``ProviderUnavailable``) are retried, with exponential backoff
  and full jitter, never sooner than the provider's ``Retry-After``;
- a wait that would end past the deadline is not slept: the call fails at once with
  ``ProviderBudgetExceeded`` and the stage falls back (default route, MISSING, or the
  fallback reply);
- permanent failures (``ProviderConfigError``, ``InvalidAnswer``) are raised at once;
- with a shared limit configured for the model (shared/providers/limits.py), each attempt
  first waits for it, within the same deadline.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from shared.config import ProviderSettings
from shared.counts import counted
from shared.errors import ChordlineError
from shared.providers.base import Usage
from shared.providers.failures import ProviderBudgetExceeded, ProviderUnavailable
from shared.providers.limits import LimitedCall, wait_for_capacity

log = logging.getLogger(__name__)

T = TypeVar("T")

# An attempt with less time than this left cannot get an answer back: fail over instead.
MIN_ATTEMPT_S = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 0.25
    max_delay_s: float = 4.0
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_delay_s=settings.backoff_base_s,
            max_delay_s=settings.backoff_max_s,
            request_timeout_s=settings.request_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
        )


@dataclass
class Clock:
    """Time, sleep and jitter; tests swap them for fakes."""

    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)


def backoff_delay(
    attempt: int, *, policy: RetryPolicy, retry_after_s: float | None, rng: random.Random
) -> float:
    """The wait before attempt ``attempt + 1``: full jitter, at least ``Retry-After``."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    jittered = rng.uniform(0, ceiling)
    return max(jittered, retry_after_s or 0.0)


def attempt_timeout(policy: RetryPolicy, *, deadline: float, now: float) -> float:
    """How long one attempt may take: the request timeout, or less when the budget is short."""
    return max(0.0, min(policy.request_timeout_s, deadline - now))


def call_with_retries(
    attempt: Callable[[float], T],
    *,
    what: str,
    deadline: float,
    policy: RetryPolicy,
    classify: Callable[[Exception], ChordlineError],
    usage: Usage | None = None,
    clock: Clock | None = None,
    limited: LimitedCall | None = None,
) -> T:
    """Run ``attempt(timeout_s)`` until it succeeds, fails permanently, or time runs out.

    ``classify`` turns whatever the SDK raised into a chordline error; only
    ``ProviderUnavailable`` is retried. ``limited``: the call counts against its model's
    shared limits, if one is configured.
    """
    clock = clock or Clock()
    for number in range(1, policy.max_attempts + 1):
        if limited is not None:
            wait_for_capacity(
                limited.provider,
                limited.model,
                tokens=limited.tokens,
                deadline=deadline - MIN_ATTEMPT_S,
                sleep=clock.sleep,
                now=clock.now,
            )
        timeout = attempt_timeout(policy, deadline=deadline, now=clock.now())
        if timeout < MIN_ATTEMPT_S:
            raise ProviderBudgetExceeded(f"{what}: no time left in the turn's budget for a call")
        try:
            return attempt(timeout)
        except ChordlineError as exc:
            failure: ChordlineError = exc
        except Exception as exc:
            failure = classify(exc)
        if not isinstance(failure, ProviderUnavailable):
            raise failure from None
        if number == policy.max_attempts:
            raise ProviderUnavailable(
                f"{failure} (gave up after {counted(number, 'attempt')})"
            ) from None
        delay = backoff_delay(
            number, policy=policy, retry_after_s=failure.retry_after_s, rng=clock.rng
        )
        left = deadline - clock.now()
        if delay + MIN_ATTEMPT_S > left:
            raise ProviderBudgetExceeded(
                f"{failure}; a retry in {delay:.2f} s would not fit the {max(left, 0):.2f} s "
                "left in the turn's budget"
            ) from None
        log.info(
            "%s; retrying the %s call in %.2f s (attempt %d of %d)",
            failure,
            what,
            delay,
            number + 1,
            policy.max_attempts,
            extra={"action": "provider_retry", "attempt": number + 1, "reason": str(failure)},
        )
        if usage is not None:
            usage.retries += 1
        clock.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
