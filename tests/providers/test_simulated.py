"""The simulated-latency providers: distributions and injected errors from settings."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import pytest

from shared.config import ProviderSettings, parse_latency_spec
from shared.errors import ProviderConfigError, ProviderError
from shared.providers.base import ConversationContext, ReplyRequest, Usage
from shared.providers.registry import build_providers
from shared.providers.simulated import (
    Faults,
    LatencyDistribution,
    SimulatedChatModel,
    SimulatedReranker,
    StageLatencies,
    draw_ms,
)
from shared.providers.timing import operation
from shared.schemas import Agent, KbLevel

CONTEXT = ConversationContext(tenant_id="t", message="How much is the Growth plan?")


def simulated(**values: Any) -> tuple[SimulatedChatModel, SimulatedReranker]:
    settings = ProviderSettings(**{"CHORDLINE_PROVIDERS": "simulated", **values})
    built = build_providers(settings)
    assert isinstance(built.chat, SimulatedChatModel) and isinstance(
        built.reranker, SimulatedReranker
    )
    return built.chat, built.reranker


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("400-800", ("uniform", (400.0, 800.0))),
        ("uniform:300:700", ("uniform", (300.0, 700.0))),
        ("normal:600:100", ("normal", (600.0, 100.0))),
        ("lognormal:550:0.4", ("lognormal", (550.0, 0.4))),
        ("fixed:250", ("fixed", (250.0,))),
    ],
)
def test_latency_specs(spec: str, parsed: tuple[str, tuple[float, ...]]) -> None:
    assert parse_latency_spec(spec) == parsed


def test_draws_follow_their_distribution() -> None:
    rng = random.Random(3)
    uniform = [LatencyDistribution("uniform", (400, 800)).draw(rng) for _ in range(2000)]
    assert min(uniform) >= 400 and max(uniform) <= 800
    lognormal = [LatencyDistribution("lognormal", (550, 0.4)).draw(rng) for _ in range(4000)]
    assert 500 < statistics.median(lognormal) < 600
    normal = [LatencyDistribution("normal", (50, 100)).draw(rng) for _ in range(500)]
    assert min(normal) == 0.0  # clipped, never negative
    assert LatencyDistribution("fixed", (250,)).draw(rng) == 250


def test_the_same_message_draws_the_same_latency() -> None:
    latency = LatencyDistribution.parse("lognormal:500:0.5")
    assert draw_ms("agent", "hello", latency, 1.0) == draw_ms("agent", "hello", latency, 1.0)
    assert draw_ms("agent", "hello", latency, 0.5) == pytest.approx(
        draw_ms("agent", "hello", latency, 1.0) / 2
    )


def test_stage_distributions_come_from_settings() -> None:
    settings = ProviderSettings(
        CHORDLINE_SIMULATED_ORCHESTRATOR_MS="fixed:40",
        CHORDLINE_SIMULATED_RETRIEVAL_MS="normal:30:5",
        CHORDLINE_SIMULATED_AGENT_MS="lognormal:100:0.2",
    )
    assert StageLatencies.from_settings(settings) == StageLatencies(
        orchestrator=LatencyDistribution("fixed", (40.0,)),
        retrieval=LatencyDistribution("normal", (30.0, 5.0)),
        agent=LatencyDistribution("lognormal", (100.0, 0.2)),
    )


def test_simulated_orchestrator_sleeps_its_draw() -> None:
    chat, _ = simulated(CHORDLINE_SIMULATED_ORCHESTRATOR_MS="fixed:150")
    usage = Usage()
    began = time.monotonic()
    chat.orchestrate(context=CONTEXT, model="m", usage=usage, deadline=time.time() + 5)
    assert time.monotonic() - began >= 0.14
    assert usage.simulated_ms == 150


def test_a_question_reranked_in_parts_is_one_retrieval_and_one_draw() -> None:
    # The draw stands for the whole retrieval: a second part's rerank within the same
    # retrieval neither draws again nor sleeps again (the bench's ideal path counts one).
    _, reranker = simulated(CHORDLINE_SIMULATED_RETRIEVAL_MS="fixed:100")
    usage = Usage()
    began = time.monotonic()
    with operation():
        for part in ("Does it integrate with Xero?", "does it integrate with Sage?"):
            reranker.rerank(
                query=part, documents=["a", "b"], model="m", usage=usage, deadline=time.time() + 5
            )
    assert usage.simulated_ms == 100
    assert 0.09 <= time.monotonic() - began < 0.18


def test_errors_are_injected_only_in_the_chosen_stages_and_kind() -> None:
    chat, reranker = simulated(
        CHORDLINE_SIMULATED_ORCHESTRATOR_MS="fixed:0",
        CHORDLINE_SIMULATED_RETRIEVAL_MS="fixed:0",
        CHORDLINE_SIMULATED_AGENT_MS="fixed:0",
        CHORDLINE_SIMULATED_ERROR_RATE=1.0,
        CHORDLINE_SIMULATED_ERROR_STAGES="agent,retrieval",
        CHORDLINE_SIMULATED_ERROR_KIND="permanent",
    )
    chat.orchestrate(context=CONTEXT, model="m", usage=Usage(), deadline=time.time() + 5)
    request = ReplyRequest(Agent.DISCOVERY, CONTEXT, [], KbLevel.MISSING, "r", "m")
    with pytest.raises(ProviderConfigError, match="injected"):
        list(chat.stream_reply(request=request, usage=Usage(), deadline=time.time() + 5))
    with pytest.raises(ProviderConfigError, match="injected"):
        reranker.rerank(
            query="q", documents=["d"], model="m", usage=Usage(), deadline=time.time() + 5
        )


def test_an_error_rate_fails_about_that_share_of_calls() -> None:
    faults = Faults(rate=0.3, rng=random.Random(11))
    failures = 0
    for _ in range(2000):
        try:
            faults.maybe_fail("agent")
        except ProviderError:
            failures += 1
    assert 500 < failures < 700
