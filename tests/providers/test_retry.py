"""The retry loop on a fake clock: what is retried, how long it waits, when it gives up."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from shared.errors import ChordlineError, ProviderConfigError
from shared.providers.base import Usage
from shared.providers.failures import ProviderBudgetExceeded, ProviderUnavailable
from shared.providers.retry import Clock, RetryPolicy, backoff_delay, call_with_retries

POLICY = RetryPolicy(
    max_attempts=3, base_delay_s=0.5, max_delay_s=4.0, request_timeout_s=8.0, connect_timeout_s=1
)


@dataclass
class FakeTime:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> Clock:
        return Clock(now=lambda: self.now, sleep=self.sleep, rng=random.Random(7))


def scripted(
    *outcomes: Exception | str, fake: FakeTime, spend_s: float = 0.1
) -> tuple[Callable[[float], str], list[float]]:
    """An attempt function that fails or answers as scripted; records the timeouts it got."""
    timeouts: list[float] = []
    queue = list(outcomes)

    def attempt(timeout: float) -> str:
        timeouts.append(timeout)
        fake.now += spend_s
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return attempt, timeouts


def never_called(exc: Exception) -> ChordlineError:
    raise AssertionError(f"classify got {exc!r}")


def test_a_transient_failure_is_retried_after_a_jittered_backoff() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted(ProviderUnavailable("x: HTTP 500"), "answer", fake=fake)
    usage = Usage()
    result = call_with_retries(
        attempt,
        what="x",
        deadline=fake.now + 10,
        policy=POLICY,
        classify=never_called,
        usage=usage,
        clock=fake.clock(),
    )
    assert result == "answer"
    assert len(timeouts) == 2 and usage.retries == 1
    assert len(fake.slept) == 1 and 0 <= fake.slept[0] <= POLICY.base_delay_s


def test_retry_after_is_honoured() -> None:
    fake = FakeTime()
    attempt, _ = scripted(
        ProviderUnavailable("x: HTTP 429", retry_after_s=2.5), "answer", fake=fake
    )
    call_with_retries(
        attempt,
        what="x",
        deadline=fake.now + 10,
        policy=POLICY,
        classify=never_called,
        clock=fake.clock(),
    )
    assert fake.slept == [2.5]


def test_a_wait_longer_than_the_budget_fails_over_at_once_without_sleeping() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted(
        ProviderUnavailable("x: HTTP 429", retry_after_s=30), "never", fake=fake
    )
    with pytest.raises(ProviderBudgetExceeded, match=r"retry in 30\.00 s would not fit"):
        call_with_retries(
            attempt,
            what="x",
            deadline=fake.now + 5,
            policy=POLICY,
            classify=never_called,
            clock=fake.clock(),
        )
    assert fake.slept == [] and len(timeouts) == 1


def test_permanent_errors_are_not_retried() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted(ProviderConfigError("x: key rejected; set X_API_KEY"), fake=fake)
    with pytest.raises(ProviderConfigError, match="set X_API_KEY"):
        call_with_retries(
            attempt,
            what="x",
            deadline=fake.now + 10,
            policy=POLICY,
            classify=never_called,
            clock=fake.clock(),
        )
    assert len(timeouts) == 1 and fake.slept == []


def test_sdk_exceptions_are_classified_before_deciding() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted(TimeoutError("read timed out"), "answer", fake=fake)
    seen: list[Exception] = []

    def classify(exc: Exception) -> ChordlineError:
        seen.append(exc)
        return ProviderUnavailable("x: timed out")

    assert (
        call_with_retries(
            attempt,
            what="x",
            deadline=fake.now + 10,
            policy=POLICY,
            classify=classify,
            clock=fake.clock(),
        )
        == "answer"
    )
    assert [type(e) for e in seen] == [TimeoutError] and len(timeouts) == 2


def test_gives_up_after_the_last_attempt() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted(*(ProviderUnavailable("x: HTTP 503") for _ in range(3)), fake=fake)
    with pytest.raises(ProviderUnavailable, match=r"HTTP 503 \(gave up after 3 attempts\)"):
        call_with_retries(
            attempt,
            what="x",
            deadline=fake.now + 60,
            policy=POLICY,
            classify=never_called,
            clock=fake.clock(),
        )
    assert len(timeouts) == 3 and len(fake.slept) == 2


def test_an_attempt_never_gets_more_time_than_the_budget_has_left() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted("answer", fake=fake)
    call_with_retries(
        attempt,
        what="x",
        deadline=fake.now + 1.5,
        policy=POLICY,
        classify=never_called,
        clock=fake.clock(),
    )
    assert timeouts == [pytest.approx(1.5)]


def test_no_call_is_made_once_the_budget_is_spent() -> None:
    fake = FakeTime()
    attempt, timeouts = scripted("answer", fake=fake)
    with pytest.raises(ProviderBudgetExceeded, match="no time left"):
        call_with_retries(
            attempt,
            what="x",
            deadline=fake.now - 0.1,
            policy=POLICY,
            classify=never_called,
            clock=fake.clock(),
        )
    assert timeouts == []


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    ceilings = [
        backoff_delay(n, policy=POLICY, retry_after_s=None, rng=Highest()) for n in range(1, 7)
    ]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
