"""Which providers this process uses: chosen once from settings, made on first use."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from shared.config import get_settings
from shared.providers.base import ChatModel, Embedder, Reranker
from shared.providers.local import LocalChatModel, LocalEmbedder, LocalReranker
from shared.providers.simulated import SimulatedChatModel, SimulatedReranker, StageLatencies


@dataclass(frozen=True)
class Providers:
    chat: ChatModel
    embedder: Embedder
    reranker: Reranker


@functools.cache
def get_providers() -> Providers:
    settings = get_settings().providers
    chat: ChatModel = LocalChatModel()
    reranker: Reranker = LocalReranker()
    embedder: Embedder = LocalEmbedder()
    if settings.mode == "simulated":
        latencies = StageLatencies()
        chat = SimulatedChatModel(
            chat,
            latencies=latencies,
            scale=settings.simulated_latency_scale,
            error_rate=settings.simulated_error_rate,
        )
        reranker = SimulatedReranker(
            reranker,
            latencies=latencies,
            scale=settings.simulated_latency_scale,
            error_rate=settings.simulated_error_rate,
        )
    return Providers(chat=chat, embedder=embedder, reranker=reranker)


def reset_providers() -> None:
    get_providers.cache_clear()
