from __future__ import annotations

import pytest

from shared.providers.base import ConversationContext, Usage
from shared.providers.intent import classify
from shared.providers.local import LocalEmbedder, LocalReranker
from shared.schemas import Agent, ConversationMemory


def ctx(message: str, memory: dict[str, object] | None = None) -> ConversationContext:
    return ConversationContext(
        tenant_id="t", message=message, memory=ConversationMemory.from_stored(memory or {})
    )


@pytest.mark.parametrize(
    ("message", "agent"),
    [
        ("Can I speak with someone from your team?", Agent.ADAPTIVE_RESPONSE),
        ("Please write a summary email for my CFO", Agent.CONTENT_GENERATOR),
        ("Our scanners stopped syncing and show an error", Agent.SUPPORT),
        ("Do you have a REST API and webhooks?", Agent.TECHNICAL_CONSULTANT),
        ("How much does the Growth plan cost?", Agent.DISCOVERY),
        ("We are evaluating inventory tools", Agent.DISCOVERY),
    ],
)
def test_classifier_proposes_the_agent_a_person_would(message: str, agent: Agent) -> None:
    assert classify(ctx(message)).proposed_agent is agent


def test_handoff_sets_the_flag() -> None:
    assert classify(ctx("I want to talk to a real person")).handoff is True


def test_memory_carries_a_vague_follow_up() -> None:
    result = classify(
        ctx(
            "and what about the other one?",
            {"last_agent": "technical_consultant", "last_phase": "technical_evaluation"},
        )
    )
    assert result.proposed_agent is Agent.TECHNICAL_CONSULTANT
    assert result.intent == "follow_up"


def test_no_cue_and_no_memory_is_low_confidence() -> None:
    assert classify(ctx("hmm")).confidence < 0.35


def test_embedder_is_deterministic_normalised_and_lexical() -> None:
    embedder = LocalEmbedder()
    a, b, c = embedder.embed(
        ["REST API webhooks", "rest api and webhooks", "barcode scanner battery"]
    )
    assert a == embedder.embed(["REST API webhooks"])[0]
    assert abs(sum(v * v for v in a) - 1.0) < 1e-9

    def dot(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert dot(a, b) > 0.8 > dot(a, c)


def test_reranker_scores_coverage_of_the_question() -> None:
    scores = LocalReranker().rerank(
        query="Does the REST API support webhooks?",
        documents=[
            "The REST API covers items. Webhooks are signed.",
            "Pallets are stored in bins.",
        ],
        model="local",
        usage=Usage(),
        deadline=0,
    )
    assert scores[0] > 0.6 > scores[1]
