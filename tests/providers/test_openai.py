"""The openai SDK (which sends through httpx2) against a fake OpenAI server on loopback."""

from __future__ import annotations

import re
import time
import traceback

import pytest

from shared.errors import ChordlineError, ProviderConfigError
from shared.providers.base import ConversationContext, ReplyRequest, Usage
from shared.providers.failures import InvalidAnswer, ProviderBudgetExceeded, ProviderUnavailable
from shared.providers.local import LocalEmbedder
from shared.providers.openai import OpenAIChatModel, OpenAIEmbedder
from shared.providers.prompts import ROUTE_SCHEMA
from shared.providers.registry import build_providers
from shared.providers.retry import Clock
from shared.schemas import (
    Agent,
    ConversationMemory,
    KbLevel,
    Orchestration,
    Qualification,
    ResearchHit,
)
from tests.providers.conftest import OPENAI_KEY, settings_for, timeout_for
from tests.providers.fake_apis import FakeAPI, Reply, malformed, rate_limited, server_error

QUESTION = "Does Halyard have a REST API and webhooks?"
CONTEXT = ConversationContext(
    tenant_id="acme",
    message=QUESTION,
    qualification_status=Qualification.ENGAGED,
    memory=ConversationMemory(turns=1),
)
HIT = ResearchHit(
    chunk_id=1,
    document_id="d",
    title="API and integrations",
    text="REST API: JSON over HTTPS.",
    score=0.9,
)


def chat_model(openai_api: FakeAPI, cohere_api: FakeAPI, **overrides: object) -> OpenAIChatModel:
    chat = build_providers(settings_for(openai_api, cohere_api, **overrides)).chat
    assert isinstance(chat, OpenAIChatModel)
    return chat


def reply_request(model: str = "gpt-4o-mini") -> ReplyRequest:
    return ReplyRequest(
        agent=Agent.TECHNICAL_CONSULTANT,
        context=CONTEXT,
        hits=[HIT],
        kb_information_level=KbLevel.ACCURATE,
        routing_reason="technical question, documentation ACCURATE",
        model=model,
    )


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    shown = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    for secret in (OPENAI_KEY, *secrets):
        assert secret not in shown


def orchestrate(
    chat: OpenAIChatModel,
    *,
    usage: Usage | None = None,
    budget_s: float = 10.0,
    model: str = "gpt-4o-mini",
) -> Orchestration:
    return chat.orchestrate(
        context=CONTEXT, model=model, usage=usage or Usage(), deadline=time.time() + budget_s
    )


# --------------------------------------------------------------------------- orchestrator


def test_orchestrator_asks_for_structured_output_and_counts_reported_usage(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    usage = Usage()
    result = orchestrate(chat_model(openai_api, cohere_api), usage=usage, model="gpt-4o")
    assert result.proposed_agent is Agent.TECHNICAL_CONSULTANT
    assert result.intent == "technical_question" and result.fallback_reason is None
    [call] = openai_api.calls("/chat/completions")
    assert call.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert call.body["model"] == "gpt-4o"
    response_format = call.body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"] == ROUTE_SCHEMA
    assert call.body["messages"][-1] == {"role": "user", "content": QUESTION}
    prompt_tokens = sum(len(str(m["content"]).split()) for m in call.body["messages"])
    assert (usage.calls, usage.tokens_in, usage.tokens_out) == (1, prompt_tokens, 17)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(refusal="I can't help with that."),
            "refused to route the turn: I can't help with that.",
        ),
        (Reply(content="phase: discovery"), "invalid answer"),
        (
            Reply(
                content='{"phase": "discovery", "intent": "x", "proposed_agent": "discovery", "confidence": 7, "handoff": false}'
            ),
            "invalid answer (confidence:",
        ),
        (
            Reply(
                content='{"phase": "lunch", "intent": "x", "proposed_agent": "discovery", "confidence": 0.5, "handoff": false}'
            ),
            "invalid answer (phase:",
        ),
        (Reply(content='{"phase": "disc', finish_reason="length"), "ran out of tokens"),
    ],
)
def test_a_refusal_or_an_invalid_answer_is_an_invalid_answer_not_retried(
    openai_api: FakeAPI, cohere_api: FakeAPI, reply: Reply, reason: str
) -> None:
    openai_api.script("chat", reply)
    usage = Usage()
    with pytest.raises(InvalidAnswer, match="gpt-4o-mini") as caught:
        orchestrate(chat_model(openai_api, cohere_api), usage=usage)
    assert reason in str(caught.value)
    assert len(openai_api.calls("/chat/completions")) == 1
    assert usage.calls == 1  # the tokens were spent all the same


# --------------------------------------------------------------------------- agents


def test_agent_reply_streams_token_by_token_with_usage_from_the_last_chunk(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    usage = Usage()
    chat = chat_model(openai_api, cohere_api, CHORDLINE_OPENAI_MAX_REPLY_TOKENS=123)
    tokens = list(
        chat.stream_reply(request=reply_request(), usage=usage, deadline=time.time() + 10)
    )
    [call] = openai_api.calls("/chat/completions")
    assert "".join(tokens) == FakeAPI.reply_text(call.body)
    assert len(tokens) > 5  # one per chunk, as the server sent them
    assert call.body["stream"] is True
    assert call.body["stream_options"] == {"include_usage": True}
    assert call.body["max_completion_tokens"] == 123
    assert any("[1] API and integrations" in m["content"] for m in call.body["messages"])
    assert (usage.calls, usage.tokens_out) == (1, len(tokens))


def test_tokens_arrive_before_the_stream_ends_and_a_stall_ends_it_without_a_retry(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("stream", Reply(stall_after_chunks=3, stall_s=5))
    chat = chat_model(openai_api, cohere_api, CHORDLINE_PROVIDER_REQUEST_TIMEOUT_S=0.5)
    received: list[str] = []
    began = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out") as caught:
        for token in chat.stream_reply(
            request=reply_request(), usage=Usage(), deadline=time.time() + 10
        ):
            received.append(token)
    assert received == ["Thanks ", "for ", "asking. "]
    assert time.monotonic() - began < 4  # the read timeout, not the server's 5 s stall
    assert len(openai_api.calls("/chat/completions")) == 1  # tokens went out: no retry
    assert_secret_free(caught.value)


def test_a_reply_still_streaming_at_the_deadline_is_cut_off(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("stream", Reply(token_delay_s=0.3))
    chat = chat_model(openai_api, cohere_api)
    received: list[str] = []
    began = time.monotonic()
    with pytest.raises(ProviderBudgetExceeded, match="still streaming"):
        for token in chat.stream_reply(
            request=reply_request(), usage=Usage(), deadline=time.time() + 1.0
        ):
            received.append(token)
    assert 1 <= len(received) < 8  # some tokens went out before the budget ran out
    assert time.monotonic() - began < 2.5


def test_unknown_agent_model_fails_fast_naming_the_setting(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    chat = chat_model(openai_api, cohere_api)
    with pytest.raises(ProviderConfigError, match=r"unknown model 'gpt-nope'.*models.agent"):
        list(
            chat.stream_reply(
                request=reply_request("gpt-nope"), usage=Usage(), deadline=time.time() + 10
            )
        )
    assert len(openai_api.calls("/chat/completions")) == 1


# --------------------------------------------------------------------------- failures


def test_rate_limit_waits_for_retry_after_then_succeeds(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("chat", rate_limited(0.4))
    usage = Usage()
    began = time.monotonic()
    result = orchestrate(chat_model(openai_api, cohere_api), usage=usage)
    assert time.monotonic() - began >= 0.4
    assert result.proposed_agent is Agent.TECHNICAL_CONSULTANT
    assert len(openai_api.calls("/chat/completions")) == 2
    assert (usage.calls, usage.retries) == (1, 1)


def test_retry_after_beyond_the_budget_fails_over_at_once(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("chat", rate_limited(30))
    chat = chat_model(openai_api, cohere_api)
    slept: list[float] = []
    chat.clock = Clock(sleep=slept.append)  # real time; a wait is recorded, not slept
    with pytest.raises(ProviderBudgetExceeded, match=r"rate limited.*would not fit"):
        orchestrate(chat, budget_s=3)
    assert slept == []  # neither the 30 s nor the 3 s budget was slept
    assert len(openai_api.calls("/chat/completions")) == 1


def test_server_errors_are_retried_until_one_answers(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("chat", server_error(), server_error())
    assert orchestrate(chat_model(openai_api, cohere_api)).intent == "technical_question"
    assert len(openai_api.calls("/chat/completions")) == 3


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (server_error(), "server error (HTTP 500)"),
        (malformed(), "malformed response"),
        (Reply(drop=True), "cannot reach"),
        (Reply(delay_s=2), "timed out"),
    ],
    ids=["500", "malformed-json", "connection-reset", "slow"],
)
def test_transient_failures_give_up_after_the_last_attempt(
    openai_api: FakeAPI, cohere_api: FakeAPI, reply: Reply, message: str
) -> None:
    openai_api.script("chat", reply, reply, reply)
    began = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=re.escape(message)) as caught:
        orchestrate(chat_model(openai_api, cohere_api, **timeout_for(reply)))
    assert "gave up after 3 attempts" in str(caught.value)
    assert len(openai_api.calls("/chat/completions")) == 3
    assert time.monotonic() - began < 8  # three 1 s timeouts at most, and short backoffs
    assert_secret_free(caught.value)


def test_a_slow_server_never_holds_a_call_past_the_budget(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("chat", Reply(delay_s=5))
    chat = chat_model(openai_api, cohere_api, CHORDLINE_PROVIDER_REQUEST_TIMEOUT_S=30)
    began = time.monotonic()
    with pytest.raises(ChordlineError):
        orchestrate(chat, budget_s=1.0)
    assert time.monotonic() - began < 3  # the 1 s budget, not the 30 s request timeout


def test_a_rejected_key_fails_fast_naming_the_setting_and_never_shows_the_key(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    wrong = "sk-chordline-wrong-0123456789abcdef"
    chat = chat_model(openai_api, cohere_api, OPENAI_API_KEY=wrong)
    with pytest.raises(ProviderConfigError) as caught:
        orchestrate(chat)
    assert (
        str(caught.value)
        == "openai: the API key was rejected (HTTP 401); set a valid OPENAI_API_KEY"
    )
    assert len(openai_api.calls("/chat/completions")) == 1
    assert_secret_free(caught.value, wrong)


def test_an_unknown_model_fails_fast_naming_the_setting(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    with pytest.raises(
        ProviderConfigError,
        match=r"unknown model 'gpt-9'.*fix the tenant setting models.orchestrator",
    ):
        orchestrate(chat_model(openai_api, cohere_api), model="gpt-9")
    assert len(openai_api.calls("/chat/completions")) == 1


# --------------------------------------------------------------------------- embeddings


def embedder(openai_api: FakeAPI, cohere_api: FakeAPI, **overrides: object) -> OpenAIEmbedder:
    built = build_providers(settings_for(openai_api, cohere_api, **overrides)).embedder
    assert isinstance(built, OpenAIEmbedder)
    return built


def test_embeddings_are_batched_and_keep_the_texts_order(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    texts = [f"text number {n} about pallets and {n * 'x'} scanners" for n in range(5)]
    usage = Usage()
    vectors = embedder(openai_api, cohere_api, CHORDLINE_OPENAI_EMBED_BATCH=2).embed(
        texts, usage=usage
    )
    calls = openai_api.calls("/embeddings")
    assert [len(c.body["input"]) for c in calls] == [2, 2, 1]
    assert {c.body["model"] for c in calls} == {"text-embedding-3-small"}
    assert {c.body["encoding_format"] for c in calls} == {"float"}
    assert all("dimensions" not in c.body for c in calls)
    local = LocalEmbedder().embed(texts)
    for vector, expected in zip(vectors, local, strict=True):
        assert vector[:384] == pytest.approx(expected) and not any(vector[384:])
    assert {len(v) for v in vectors} == {1536}
    assert (usage.calls, usage.tokens_in) == (3, sum(len(t.split()) for t in texts))


def test_shortened_embeddings_are_requested_with_dimensions(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    built = embedder(openai_api, cohere_api, CHORDLINE_OPENAI_EMBEDDING_DIM=256)
    assert (built.model, built.dim) == ("text-embedding-3-small", 256)
    assert len(built.embed(["hello"])[0]) == 256
    assert openai_api.calls("/embeddings")[0].body["dimensions"] == 256


def test_vectors_of_the_wrong_size_are_a_configuration_error(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }
    openai_api.script("embeddings", Reply(body=body))
    with pytest.raises(
        ProviderConfigError,
        match=r"3-dimensional vectors, not 1536.*CHORDLINE_OPENAI_EMBEDDING_DIM",
    ):
        embedder(openai_api, cohere_api).embed(["hello"])


def test_embedding_retries_stop_at_the_turn_deadline(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    openai_api.script("embeddings", rate_limited(5))
    with pytest.raises(ProviderBudgetExceeded):
        embedder(openai_api, cohere_api).embed(["hello"], deadline=time.time() + 2)
    assert len(openai_api.calls("/embeddings")) == 1
