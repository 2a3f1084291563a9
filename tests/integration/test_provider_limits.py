"""Provider limits shared by every process, on real Redis: separate processes making calls to
one model stay under its requests per minute together, live calls go before re-scoring's,
and a live call that would wait past its budget is not made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

from shared.config import reset_settings
from shared.providers.failures import ProviderBudgetExceeded
from shared.providers.limits import BURST_S, wait_for_capacity
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

# A process making ``calls`` calls to one model, as fast as the shared limit lets it; it
# prints, per call, when it went and how long it waited.
CALLER = textwrap.dedent(
    """
    import json, sys, time
    from shared.providers.limits import rescoring_lane, wait_for_capacity
    from contextlib import nullcontext

    model, calls, every, lane = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    start = float(sys.argv[5])
    time.sleep(max(0.0, start - time.time()))
    out = []
    with rescoring_lane() if lane == "rescoring" else nullcontext():
        for _ in range(calls):
            began = time.time()
            waited = wait_for_capacity("simulated", model, tokens=0, deadline=time.time() + 60)
            out.append({"at": time.time(), "waited": waited, "took": time.time() - began})
            if every:
                time.sleep(every)
    print(json.dumps(out))
    """
)


def _callers(
    model: str, limits: str, specs: list[tuple[int, float, str]]
) -> list[list[dict[str, float]]]:
    """Run one process per (calls, pause between calls, lane), all starting together."""
    env = {
        **os.environ,
        "CHORDLINE_PROVIDER_LIMITS": limits,
        "PYTHONPATH": str(ROOT),
    }
    start = time.time() + 2.0  # interpreters start at different speeds
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CALLER, model, str(calls), str(every), lane, str(start)],
            env=env,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for calls, every, lane in specs
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        results.append(json.loads(out))
    return results


def test_processes_sharing_a_model_stay_under_its_requests_per_minute_together(
    services: None,
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    rpm = 600  # 10 a second; a bucket of BURST_S seconds' worth
    results = _callers(model, f"simulated/{model}={rpm}rpm", [(25, 0.0, "live")] * 4)
    times = sorted(call["at"] for calls in results for call in calls)
    burst = rpm / 60 * BURST_S
    # 100 calls: the first burst at once, the rest at 10 a second, whoever makes them
    assert times[-1] - times[0] >= (len(times) - burst) / (rpm / 60) - 0.5
    for i, at in enumerate(times):  # never more than the burst plus what refilled
        assert i + 1 <= burst + (at - times[0]) * rpm / 60 + 1


def test_live_calls_go_before_rescoring_calls(services: None) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    # 10 requests a second: re-scoring drains the bucket down to the live reserve, the live
    # process takes 5 a second, and must never wait for re-scoring's share
    live, rescoring = _callers(
        model, f"simulated/{model}=600rpm", [(20, 0.2, "live"), (60, 0.0, "rescoring")]
    )
    assert max(call["waited"] for call in live) == 0.0
    assert max(call["waited"] for call in rescoring) > 0.0  # it was held back
    # re-scoring still got what live left over (about 5 a second) and the burst
    assert len(rescoring) == 60


@pytest.fixture
def limited_model(services: None) -> Iterator[str]:
    model = f"m-{uuid.uuid4().hex[:8]}"
    os.environ["CHORDLINE_PROVIDER_LIMITS"] = f"openai/{model}=60rpm"
    reset_settings()
    try:
        yield model
    finally:
        del os.environ["CHORDLINE_PROVIDER_LIMITS"]
        reset_settings()


def test_a_live_call_that_would_wait_past_its_budget_is_not_made(limited_model: str) -> None:
    for _ in range(5):  # one a second, five at once: the bucket is empty after these
        wait_for_capacity("openai", limited_model, tokens=0, deadline=time.time() + 10)
    began = time.monotonic()
    with pytest.raises(ProviderBudgetExceeded) as refused:
        wait_for_capacity("openai", limited_model, tokens=0, deadline=time.time() + 0.2)
    assert time.monotonic() - began < 0.2  # it did not sleep first
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        f"openai/{limited_model}: the fleet's shared limit (60 requests per minute, "
        "CHORDLINE_PROVIDER_LIMITS) would hold this live call"
    )
    # with time to wait, the call waits its turn (about a second) instead
    waited = wait_for_capacity("openai", limited_model, tokens=0, deadline=time.time() + 5)
    assert 0.5 < waited < 1.5
