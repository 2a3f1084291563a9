"""Providers with the latency of real ones, for benchmarks and fault tests.

Each stage's latency is drawn from a configured range (the design's field report by
default: orchestrator 400-800 ms, retrieval + rerank 300-700 ms, agent 1-2 s streamed) and
slept, around an offline provider that computes the actual answer. Draws are seeded by the
stage and the message, so the same message costs the same in every topology: a benchmark
can compare topologies on identical work. Errors can be injected at a set rate.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from shared.errors import ProviderError
from shared.providers.base import ChatModel, ConversationContext, ReplyRequest, Reranker, Usage
from shared.providers.timing import elapsed_ms
from shared.schemas import Orchestration


@dataclass(frozen=True)
class LatencyRange:
    low_ms: float
    high_ms: float


@dataclass(frozen=True)
class StageLatencies:
    orchestrator: LatencyRange = LatencyRange(400, 800)
    retrieval: LatencyRange = LatencyRange(300, 700)
    agent: LatencyRange = LatencyRange(1000, 2000)


def draw_ms(stage: str, key: str, latency: LatencyRange, scale: float) -> float:
    """The latency of one stage for one message: uniform in the range, seeded."""
    seed = int.from_bytes(hashlib.sha256(f"{stage}:{key}".encode()).digest()[:8], "little")
    return random.Random(seed).uniform(latency.low_ms, latency.high_ms) * scale


class _Faults:
    def __init__(self, error_rate: float) -> None:
        self.error_rate = error_rate
        self._rng = random.Random()

    def maybe_fail(self, stage: str) -> None:
        if self.error_rate and self._rng.random() < self.error_rate:
            raise ProviderError(f"simulated {stage} provider error (injected)")


def _sleep_within(ms: float, deadline: float) -> None:
    """Sleep ``ms`` (nothing when the real work already took longer), within the budget."""
    remaining = deadline - time.time()
    if ms / 1000 > remaining:
        time.sleep(max(remaining, 0))
        raise ProviderError("simulated provider call ran past the turn's budget")
    time.sleep(max(ms, 0.0) / 1000)


class SimulatedChatModel:
    name = "simulated"

    def __init__(
        self, inner: ChatModel, *, latencies: StageLatencies, scale: float, error_rate: float
    ) -> None:
        self.inner, self.latencies, self.scale = inner, latencies, scale
        self.faults = _Faults(error_rate)

    def orchestrate(
        self, *, context: ConversationContext, model: str, usage: Usage, deadline: float
    ) -> Orchestration:
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
        ms = draw_ms("agent", request.context.message, self.latencies.agent, self.scale)
        usage.simulated_ms += ms
        self.faults.maybe_fail("agent")
        started = time.time()
        tokens = list(self.inner.stream_reply(request=request, usage=usage, deadline=deadline))
        for index, token in enumerate(tokens, 1):
            # Tokens arrive spread over the drawn latency, as a streamed answer does.
            _sleep_within(
                max(0.0, started + ms / 1000 * index / len(tokens) - time.time()) * 1000, deadline
            )
            yield token


class SimulatedReranker:
    """Carries the whole retrieval latency: embedding the query, searching and reranking."""

    name = "simulated"

    def __init__(
        self, inner: Reranker, *, latencies: StageLatencies, scale: float, error_rate: float
    ) -> None:
        self.inner, self.latencies, self.scale = inner, latencies, scale
        self.faults = _Faults(error_rate)

    def rerank(
        self, *, query: str, documents: Sequence[str], model: str, usage: Usage, deadline: float
    ) -> list[float]:
        ms = draw_ms("retrieval", query, self.latencies.retrieval, self.scale)
        usage.simulated_ms += ms
        scores = self.inner.rerank(
            query=query, documents=documents, model=model, usage=usage, deadline=deadline
        )
        # The draw covers the whole retrieval (embed, search, rerank): sleep what is left.
        _sleep_within(ms - elapsed_ms(), deadline)
        self.faults.maybe_fail("rerank")
        return scores
