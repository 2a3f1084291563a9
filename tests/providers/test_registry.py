"""Which provider serves each stage, from settings; and the settings' validation messages."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from shared.config import ProviderSettings
from shared.providers.cohere import CohereReranker
from shared.providers.local import LocalChatModel, LocalEmbedder, LocalReranker
from shared.providers.openai import OpenAIChatModel, OpenAIEmbedder
from shared.providers.registry import build_providers, stage_providers
from shared.providers.simulated import SimulatedChatModel, SimulatedReranker
from shared.schemas import StageModels

OPENAI = {"OPENAI_API_KEY": "sk-chordline-registry-0123456789"}
COHERE = {"COHERE_API_KEY": "co-chordline-registry-0123456789"}
# Explicit values for every provider setting, so the test process's environment never leaks in.
UNSET: dict[str, Any] = {
    "OPENAI_API_KEY": None,
    "OPENAI_BASE_URL": None,
    "COHERE_API_KEY": None,
    "COHERE_BASE_URL": None,
    "CHORDLINE_PROVIDERS": "auto",
    "CHORDLINE_CHAT_PROVIDER": "auto",
    "CHORDLINE_EMBEDDING_PROVIDER": "auto",
    "CHORDLINE_RERANK_PROVIDER": "auto",
}


def settings(**values: Any) -> ProviderSettings:
    return ProviderSettings(**{**UNSET, **values})


def kinds(values: dict[str, Any]) -> tuple[type, type, type]:
    built = build_providers(settings(**values))
    return type(built.chat), type(built.embedder), type(built.reranker)


def test_without_keys_everything_is_offline() -> None:
    assert kinds({}) == (LocalChatModel, LocalEmbedder, LocalReranker)


def test_each_key_switches_its_own_stages() -> None:
    assert kinds(OPENAI) == (OpenAIChatModel, OpenAIEmbedder, LocalReranker)
    assert kinds(COHERE) == (LocalChatModel, LocalEmbedder, CohereReranker)
    assert kinds({**OPENAI, **COHERE}) == (OpenAIChatModel, OpenAIEmbedder, CohereReranker)


def test_a_stage_can_be_pinned_to_its_local_provider() -> None:
    pinned = {**OPENAI, **COHERE, "CHORDLINE_EMBEDDING_PROVIDER": "local"}
    assert kinds(pinned) == (OpenAIChatModel, LocalEmbedder, CohereReranker)


def test_offline_and_simulated_modes_ignore_keys() -> None:
    keys = {**OPENAI, **COHERE}
    assert kinds({**keys, "CHORDLINE_PROVIDERS": "offline"}) == (
        LocalChatModel,
        LocalEmbedder,
        LocalReranker,
    )
    assert kinds({**keys, "CHORDLINE_PROVIDERS": "simulated"}) == (
        SimulatedChatModel,
        LocalEmbedder,
        SimulatedReranker,
    )


def test_the_embedder_exposes_its_model_and_dimension() -> None:
    built = build_providers(
        settings(**OPENAI, CHORDLINE_OPENAI_EMBEDDING_MODEL="text-embedding-3-large")
    )
    assert (built.embedder.model, built.embedder.dim) == ("text-embedding-3-large", 3072)
    custom = build_providers(
        settings(
            **OPENAI,
            CHORDLINE_OPENAI_EMBEDDING_MODEL="nomic-embed-text",
            CHORDLINE_OPENAI_EMBEDDING_DIM=768,
        )
    )
    assert (custom.embedder.model, custom.embedder.dim) == ("nomic-embed-text", 768)


def test_stage_rows_name_provider_model_and_endpoint_without_secrets() -> None:
    values = {
        **OPENAI,
        **COHERE,
        "OPENAI_BASE_URL": "https://proxy-user:proxy-pass@llm.internal:8443/v1/",
    }
    rows = stage_providers(settings(**values), StageModels(agent="gpt-4o", rerank="rerank-v3.5"))
    assert [(r.stage, r.provider, r.model, r.endpoint) for r in rows] == [
        ("orchestrator", "openai", "gpt-4o-mini", "https://llm.internal:8443/v1"),
        ("agent", "openai", "gpt-4o", "https://llm.internal:8443/v1"),
        ("facts", "openai", "gpt-4o", "https://llm.internal:8443/v1"),
        ("embedding", "openai", "text-embedding-3-small", "https://llm.internal:8443/v1"),
        ("rerank", "cohere", "rerank-v3.5", "https://api.cohere.com"),
    ]
    assert "proxy-pass" not in repr(rows) and OPENAI["OPENAI_API_KEY"] not in repr(rows)


def test_keys_never_show_in_the_settings_repr() -> None:
    shown = repr(settings(**OPENAI, **COHERE)) + str(settings(**OPENAI, **COHERE).model_dump())
    assert OPENAI["OPENAI_API_KEY"] not in shown and COHERE["COHERE_API_KEY"] not in shown


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"OPENAI_BASE_URL": "http://localhost:11434/v1"},
            "OPENAI_BASE_URL is set but OPENAI_API_KEY is not",
        ),
        (
            {"COHERE_BASE_URL": "http://localhost:8080"},
            "COHERE_BASE_URL is set but COHERE_API_KEY is not",
        ),
        ({**OPENAI, "OPENAI_BASE_URL": "localhost:11434"}, "must be an http:// or https:// URL"),
        (
            {"CHORDLINE_CHAT_PROVIDER": "openai"},
            "CHORDLINE_CHAT_PROVIDER=openai needs OPENAI_API_KEY",
        ),
        (
            {"CHORDLINE_RERANK_PROVIDER": "cohere"},
            "CHORDLINE_RERANK_PROVIDER=cohere needs COHERE_API_KEY",
        ),
        (
            {**OPENAI, "CHORDLINE_CHAT_PROVIDER": "openai", "CHORDLINE_PROVIDERS": "offline"},
            "CHORDLINE_CHAT_PROVIDER=openai contradicts CHORDLINE_PROVIDERS=offline",
        ),
        (
            {**OPENAI, "CHORDLINE_OPENAI_EMBEDDING_MODEL": "nomic-embed-text"},
            "set CHORDLINE_OPENAI_EMBEDDING_DIM",
        ),
        ({"CHORDLINE_SIMULATED_AGENT_MS": "slow"}, "is not a latency distribution"),
        ({"CHORDLINE_SIMULATED_AGENT_MS": "900-300"}, "LOW must not exceed HIGH"),
        ({"CHORDLINE_SIMULATED_ERROR_STAGES": "agent,merge"}, "unknown stage(s) ['merge']"),
        ({"CHORDLINE_PROVIDER_MAX_ATTEMPTS": 0}, "CHORDLINE_PROVIDER_MAX_ATTEMPTS"),
    ],
)
def test_settings_validation_names_the_setting(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        settings(**values)


def test_a_blank_key_counts_as_unset() -> None:
    assert kinds({"OPENAI_API_KEY": "  ", "COHERE_API_KEY": ""}) == (
        LocalChatModel,
        LocalEmbedder,
        LocalReranker,
    )
