"""Which providers this process uses: chosen once from settings, made on first use.

- ``CHORDLINE_PROVIDERS=offline``: the local providers, whatever keys are set.
- ``CHORDLINE_PROVIDERS=simulated``: the local providers inside the simulated-latency
  wrappers (benchmarks, fault tests); no network, whatever keys are set.
- ``CHORDLINE_PROVIDERS=auto`` (default): per stage, OpenAI for chat and embeddings when
  OPENAI_API_KEY is set, Cohere for rerank when COHERE_API_KEY is set, local otherwise
  (see ``ProviderSettings.stage_backend``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.config import (
    COHERE_DEFAULT_BASE_URL,
    OPENAI_DEFAULT_BASE_URL,
    ProviderSettings,
    get_settings,
)
from shared.errors import ChordlineError
from shared.providers.base import ChatModel, Embedder, FactExtractor, Reranker
from shared.providers.failures import SecretScrubber, safe_url
from shared.providers.local import LocalChatModel, LocalEmbedder, LocalReranker, PatternFacts
from shared.providers.retry import RetryPolicy
from shared.providers.simulated import (
    Faults,
    SimulatedChatModel,
    SimulatedReranker,
    StageLatencies,
)
from shared.runtime import Resource, runtime
from shared.schemas import StageModels

if TYPE_CHECKING:  # the SDKs take seconds to import: only processes that use them do
    import openai

    from shared.providers.openai import OpenAIEmbedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Providers:
    chat: ChatModel
    embedder: Embedder
    reranker: Reranker
    # The agent stage's reader of the customer's facts: the OpenAI chat model when chat is
    # on OpenAI (structured output), patterns otherwise (offline and simulated included).
    facts: FactExtractor = field(default_factory=PatternFacts)


@dataclass(frozen=True)
class StageProvider:
    """What serves one stage, as the doctor shows it: never a secret."""

    stage: str
    provider: str
    model: str
    endpoint: str


def secret_scrubber(settings: ProviderSettings) -> SecretScrubber:
    """Scrubs this deployment's API keys from any text."""
    return SecretScrubber(
        key.get_secret_value()
        for key in (settings.openai_api_key, settings.cohere_api_key)
        if key is not None
    )


PROVIDERS = Resource("model providers", make=lambda: build_providers(get_settings().providers))


def get_providers() -> Providers:
    """This process's providers, made from settings on first use (or installed by a test)."""
    return runtime().get(PROVIDERS)


def reset_providers() -> None:
    runtime().discard(PROVIDERS)


def warm_providers() -> None:
    """Make this process's providers now (SDK imports, HTTP clients), not in a first turn."""
    try:
        providers = get_providers()
    except ChordlineError as exc:  # the stages will fall back, saying the same
        log.error("model providers unusable: %s", exc, extra={"action": "providers_unusable"})
        return
    log.info(
        "model providers ready: chat=%s embedding=%s/%s rerank=%s",
        providers.chat.name,
        providers.embedder.name,
        providers.embedder.model,
        providers.reranker.name,
        extra={"action": "providers_ready"},
    )


def build_providers(settings: ProviderSettings) -> Providers:
    if settings.mode == "simulated":
        return simulated_providers(settings)
    scrub = secret_scrubber(settings)
    policy = RetryPolicy.from_settings(settings)
    chat: ChatModel = LocalChatModel()
    facts: FactExtractor = PatternFacts()
    embedder: Embedder = LocalEmbedder()
    reranker: Reranker = LocalReranker()
    if "openai" in {settings.stage_backend("chat"), settings.stage_backend("embedding")}:
        from shared.providers.openai import OpenAIChatModel, openai_client

        client = openai_client(settings)
        if settings.stage_backend("chat") == "openai":
            chat = facts = OpenAIChatModel(
                client,
                policy=policy,
                max_reply_tokens=settings.openai_max_reply_tokens,
                scrub=scrub,
            )
        if settings.stage_backend("embedding") == "openai":
            embedder = openai_embedder(client, settings=settings, policy=policy, scrub=scrub)
    if settings.stage_backend("rerank") == "cohere":
        from shared.providers.cohere import CohereReranker, cohere_client

        reranker = CohereReranker(
            cohere_client(settings), policy=policy, scrub=scrub, base_url=settings.cohere_base_url
        )
    return Providers(chat=chat, embedder=embedder, reranker=reranker, facts=facts)


def openai_embedder(
    client: openai.OpenAI, *, settings: ProviderSettings, policy: RetryPolicy, scrub: SecretScrubber
) -> OpenAIEmbedder:
    from shared.providers.openai import OpenAIEmbedder, embedding_dim

    model = settings.openai_embedding_model
    return OpenAIEmbedder(
        client,
        model=model,
        dim=embedding_dim(model, settings.openai_embedding_dim),
        # text-embedding-3 models return shortened vectors on request.
        shorten=settings.openai_embedding_dim is not None and model.startswith("text-embedding-3"),
        batch=settings.openai_embed_batch,
        policy=policy,
        ingest_budget_s=settings.ingest_budget_s,
        scrub=scrub,
    )


def simulated_providers(settings: ProviderSettings) -> Providers:
    latencies = StageLatencies.from_settings(settings)
    faults = Faults.from_settings(settings)
    return Providers(
        chat=SimulatedChatModel(
            LocalChatModel(),
            latencies=latencies,
            scale=settings.simulated_latency_scale,
            faults=faults,
        ),
        embedder=LocalEmbedder(),
        reranker=SimulatedReranker(
            LocalReranker(),
            latencies=latencies,
            scale=settings.simulated_latency_scale,
            faults=faults,
        ),
    )


def stage_providers(settings: ProviderSettings, models: StageModels) -> list[StageProvider]:
    """Per stage: provider, model and endpoint, from settings alone (nothing is called)."""
    if settings.mode != "auto":
        name = "simulated" if settings.mode == "simulated" else "local"
        local_models = {"embedding": LocalEmbedder.model, "facts": "patterns"}
        return [
            StageProvider(stage, name, local_models.get(stage, "-"), "offline")
            for stage in ("orchestrator", "agent", "facts", "embedding", "rerank")
        ]
    openai_url = safe_url(settings.openai_base_url or OPENAI_DEFAULT_BASE_URL)
    chat = settings.stage_backend("chat")
    rows = [
        StageProvider(
            stage,
            chat,
            model if chat == "openai" else "-",
            openai_url if chat == "openai" else "offline",
        )
        for stage, model in (("orchestrator", models.orchestrator), ("agent", models.agent))
    ]
    # The customer's facts: Structured Outputs on the agent's model when chat is on OpenAI.
    rows.append(
        StageProvider("facts", "openai", models.agent, openai_url)
        if chat == "openai"
        else StageProvider("facts", "local", "patterns", "offline")
    )
    if settings.stage_backend("embedding") == "openai":
        rows.append(
            StageProvider("embedding", "openai", settings.openai_embedding_model, openai_url)
        )
    else:
        rows.append(StageProvider("embedding", "local", LocalEmbedder.model, "offline"))
    if settings.stage_backend("rerank") == "cohere":
        rows.append(
            StageProvider(
                "rerank",
                "cohere",
                models.rerank,
                safe_url(settings.cohere_base_url or COHERE_DEFAULT_BASE_URL),
            )
        )
    else:
        rows.append(StageProvider("rerank", "local", "-", "offline"))
    return rows
