"""Providers with the latency of real ones, for benchmarks and fault tests.

Each stage's latency is drawn from a configured distribution (settings
``CHORDLINE_SIMULATED_{ORCHESTRATOR,RETRIEVAL,AGENT}_MS``; typical model-API times by
default: orchestrator 400-800 ms, retrieval + rerank 300-700 ms, agent 1-2 s streamed) and
slept, around an offline provider that computes the actual answer. Draws are seeded by the
stage and the message, so the same message costs the same in every topology: a benchmark
can compare topologies on identical work. The real work done inside a stage (the offline
answer, the embedding and the pgvector query of retrieval) is counted inside its drawn
latency, not added on top (see ``timing``). Errors can be injected at a set rate, in chosen
stages, as transient (``ProviderError``) or permanent (``ProviderConfigError``) failures.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from shared.config import SIMULATED_STAGES, ProviderSettings, parse_latency_spec
from shared.errors import ProviderConfigError, ProviderError
from shared.providers.base import ChatModel, ConversationContext, ReplyRequest, Reranker, Usage
from shared.providers.limits import wait_for_capacity
from shared.providers.timing import elapsed_ms
from shared.schemas import Orchestration
from shared.text import count_tokens


@dataclass(frozen=True)
class LatencyDistribution:
    """Milliseconds: ``uniform`` (low, high), ``normal`` (mean, sd), ``lognormal`` (median,
    sigma) or ``fixed`` (ms). Draws below zero are clipped to zero."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str) -> LatencyDistribution:
        kind, params = parse_latency_spec(spec)
        return cls(kind, params)

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.params[0], self.params[1])
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.params[0], self.params[1]))
        if self.kind == "lognormal":
            median, sigma = self.params
            return median * math.exp(rng.gauss(0.0, sigma)) if median > 0 else 0.0
        return self.params[0]


# Typical model-API stage times: the defaults.
ORCHESTRATOR_MS = LatencyDistribution("uniform", (400.0, 800.0))
RETRIEVAL_MS = LatencyDistribution("uniform", (300.0, 700.0))
AGENT_MS = LatencyDistribution("uniform", (1000.0, 2000.0))


@dataclass(frozen=True)
class StageLatencies:
    orchestrator: LatencyDistribution = ORCHESTRATOR_MS
    retrieval: LatencyDistribution = RETRIEVAL_MS
    agent: LatencyDistribution = AGENT_MS

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> StageLatencies:
        return cls(
            orchestrator=LatencyDistribution.parse(settings.simulated_orchestrator_ms),
            retrieval=LatencyDistribution.parse(settings.simulated_retrieval_ms),
            agent=LatencyDistribution.parse(settings.simulated_agent_ms),
        )


def draw_ms(stage: str, key: str, latency: LatencyDistribution, scale: float) -> float:
    """The latency of one stage for one message, seeded by both."""
    seed = int.from_bytes(hashlib.sha256(f"{stage}:{key}".encode()).digest()[:8], "little")
    return latency.draw(random.Random(seed)) * scale


@dataclass
class Faults:
    """Injected failures: ``rate`` of the calls of ``stages`` fail, as ``kind`` says."""

    rate: float = 0.0
    kind: str = "transient"
    stages: frozenset[str] = frozenset(SIMULATED_STAGES)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> Faults:
        return cls(
            rate=settings.simulated_error_rate,
            kind=settings.simulated_error_kind,
            stages=frozenset(s for s in settings.simulated_error_stages.split(",") if s),
        )

    def maybe_fail(self, stage: str) -> None:
        if stage not in self.stages or not self.rate or self.rng.random() >= self.rate:
            return
        if self.kind == "permanent":
            raise ProviderConfigError(f"simulated {stage} provider rejected the call (injected)")
        raise ProviderError(f"simulated {stage} provider error (injected)")


def _sleep_within(ms: float, deadline: float) -> None:
    """Sleep ``ms`` (nothing when the real work already took longer), within the budget."""
    remaining = deadline - time.time()
    if ms / 1000 > remaining:
        time.sleep(max(remaining, 0))
        raise ProviderError("simulated provider call ran past the turn's budget")
    time.sleep(max(ms, 0.0) / 1000)


STREAM_CHUNK_S = 0.05
SIMULATED_REPLY_TOKENS = 600  # what a reply counts against a tokens-per-minute limit


class SimulatedChatModel:
    name = "simulated"

    def __init__(
        self, inner: ChatModel, *, latencies: StageLatencies, scale: float, faults: Faults
    ) -> None:
        self.inner, self.latencies, self.scale, self.faults = inner, latencies, scale, faults

    def orchestrate(
        self, *, context: ConversationContext, model: str, usage: Usage, deadline: float
    ) -> Orchestration:
        wait_for_capacity(
            self.name, model, tokens=count_tokens(context.message) + 100, deadline=deadline
        )
        ms = draw_ms("orchestrator", context.message, self.latencies.orchestrator, self.scale)
        usage.simulated_ms += ms
        began = time.monotonic()
        result = self.inner.orchestrate(
            context=context, model=model, usage=usage, deadline=deadline
        )
        _sleep_within(ms - elapsed_ms(began), deadline)  # its own work is inside the draw
        self.faults.maybe_fail("orchestrator")
        return result

    def stream_reply(
        self, *, request: ReplyRequest, usage: Usage, deadline: float
    ) -> Iterator[str]:
        wait_for_capacity(
            self.name,
            request.model,
            tokens=count_tokens(request.context.message) + SIMULATED_REPLY_TOKENS,
            deadline=deadline,
        )
        ms = draw_ms("agent", request.context.message, self.latencies.agent, self.scale)
        usage.simulated_ms += ms
        self.faults.maybe_fail("agent")
        started = time.time()
        tokens = list(self.inner.stream_reply(request=request, usage=usage, deadline=deadline))
        # Tokens arrive spread over the drawn latency, as a streamed answer does, in chunks
        # at most every STREAM_CHUNK_S (model APIs send several tokens per event at speed).
        chunks = max(1, min(len(tokens), int(ms / 1000 / STREAM_CHUNK_S)))
        for chunk in range(1, chunks + 1):
            _sleep_within(
                max(0.0, started + ms / 1000 * chunk / chunks - time.time()) * 1000, deadline
            )
            yield from tokens[len(tokens) * (chunk - 1) // chunks : len(tokens) * chunk // chunks]


class SimulatedReranker:
    """Carries the whole retrieval latency: embedding the query, searching and reranking."""

    name = "simulated"

    def __init__(
        self, inner: Reranker, *, latencies: StageLatencies, scale: float, faults: Faults
    ) -> None:
        self.inner, self.latencies, self.scale, self.faults = inner, latencies, scale, faults

    def rerank(
        self, *, query: str, documents: Sequence[str], model: str, usage: Usage, deadline: float
    ) -> list[float]:
        wait_for_capacity(self.name, model, tokens=0, deadline=deadline)
        ms = usage.simulated_retrieval_ms
        if ms is None:  # the stage's first rerank: the draw covers its whole retrieval
            ms = draw_ms("retrieval", query, self.latencies.retrieval, self.scale)
            usage.simulated_retrieval_ms = ms
            usage.simulated_ms += ms
        scores = self.inner.rerank(
            query=query, documents=documents, model=model, usage=usage, deadline=deadline
        )
        # The draw covers the whole retrieval (embed, search, rerank): sleep what is left.
        _sleep_within(ms - elapsed_ms(), deadline)
        self.faults.maybe_fail("retrieval")
        return scores
