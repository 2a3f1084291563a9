"""The cohere v2 client against a fake Cohere rerank server on loopback."""

from __future__ import annotations

import re
import time
import traceback

import pytest

from shared.errors import ProviderConfigError
from shared.providers.base import Usage
from shared.providers.cohere import CohereReranker
from shared.providers.failures import ProviderBudgetExceeded, ProviderUnavailable
from shared.providers.local import LocalReranker
from shared.providers.registry import build_providers
from shared.providers.retry import Clock
from tests.providers.conftest import COHERE_KEY, settings_for, timeout_for
from tests.providers.fake_apis import FakeAPI, Reply, malformed, rate_limited, server_error

QUERY = "How do webhooks retry failed deliveries?"
DOCUMENTS = [
    "Pallets are stored in bins by zone.",
    "Webhooks retry failed deliveries with exponential backoff for 24 hours.",
    "Invoices are issued monthly.",
]


def reranker(openai_api: FakeAPI, cohere_api: FakeAPI, **overrides: object) -> CohereReranker:
    built = build_providers(settings_for(openai_api, cohere_api, **overrides)).reranker
    assert isinstance(built, CohereReranker)
    return built


def rerank(
    built: CohereReranker,
    *,
    model: str = "rerank-v3.5",
    budget_s: float = 10.0,
    usage: Usage | None = None,
) -> list[float]:
    return built.rerank(
        query=QUERY,
        documents=DOCUMENTS,
        model=model,
        usage=usage or Usage(),
        deadline=time.time() + budget_s,
    )


def test_scores_come_back_in_the_documents_order(openai_api: FakeAPI, cohere_api: FakeAPI) -> None:
    usage = Usage()
    scores = rerank(reranker(openai_api, cohere_api), model="rerank-english-v3.0", usage=usage)
    expected = LocalReranker().rerank(
        query=QUERY, documents=DOCUMENTS, model="-", usage=Usage(), deadline=0
    )
    assert scores == pytest.approx(expected)
    assert scores[1] == max(scores)  # the server sent them ranked; they are back in order
    [call] = cohere_api.calls("/v2/rerank")
    assert call.headers["authorization"] == f"Bearer {COHERE_KEY}"
    assert call.body["model"] == "rerank-english-v3.0"
    assert call.body["query"] == QUERY and call.body["documents"] == DOCUMENTS
    assert (usage.calls, usage.search_units) == (1, 1)


def test_rate_limit_waits_for_retry_after(openai_api: FakeAPI, cohere_api: FakeAPI) -> None:
    cohere_api.script("rerank", rate_limited(0.3))
    began = time.monotonic()
    usage = Usage()
    rerank(reranker(openai_api, cohere_api), usage=usage)
    assert time.monotonic() - began >= 0.3
    assert len(cohere_api.calls("/v2/rerank")) == 2 and usage.retries == 1


def test_retry_after_beyond_the_budget_fails_over_at_once(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    cohere_api.script("rerank", rate_limited(20))
    built = reranker(openai_api, cohere_api)
    slept: list[float] = []
    built.clock = Clock(sleep=slept.append)  # real time; a wait is recorded, not slept
    with pytest.raises(ProviderBudgetExceeded, match="would not fit"):
        rerank(built, budget_s=2)
    assert slept == []  # neither the 20 s Retry-After nor what is left of the budget
    assert len(cohere_api.calls("/v2/rerank")) == 1


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
def test_transient_failures_are_retried_then_given_up(
    openai_api: FakeAPI, cohere_api: FakeAPI, reply: Reply, message: str
) -> None:
    cohere_api.script("rerank", reply, reply, reply)
    began = time.monotonic()
    with pytest.raises(ProviderUnavailable, match=re.escape(message)):
        rerank(reranker(openai_api, cohere_api, **timeout_for(reply)))
    assert len(cohere_api.calls("/v2/rerank")) == 3
    assert time.monotonic() - began < 8


def test_one_server_error_then_an_answer(openai_api: FakeAPI, cohere_api: FakeAPI) -> None:
    cohere_api.script("rerank", server_error())
    assert len(rerank(reranker(openai_api, cohere_api))) == 3
    assert len(cohere_api.calls("/v2/rerank")) == 2


def test_a_rejected_key_fails_fast_naming_the_setting(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    wrong = "co-chordline-wrong-0123456789abcdef"
    with pytest.raises(ProviderConfigError) as caught:
        rerank(reranker(openai_api, cohere_api, COHERE_API_KEY=wrong))
    assert (
        str(caught.value)
        == "cohere: the API key was rejected (HTTP 401); set a valid COHERE_API_KEY"
    )
    assert len(cohere_api.calls("/v2/rerank")) == 1
    shown = "".join(traceback.format_exception(caught.value))
    assert wrong not in shown and COHERE_KEY not in shown


def test_an_unknown_model_fails_fast_naming_the_setting(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    with pytest.raises(ProviderConfigError, match=r"unknown model 'rerank-v0'.*models\.rerank"):
        rerank(reranker(openai_api, cohere_api), model="rerank-v0")
    assert len(cohere_api.calls("/v2/rerank")) == 1


def test_a_result_for_a_document_that_was_not_sent_is_malformed(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    body = {"id": "r", "results": [{"index": 7, "relevance_score": 0.5}], "meta": {}}
    cohere_api.script("rerank", Reply(body=body), Reply(body=body), Reply(body=body))
    with pytest.raises(ProviderUnavailable, match="document 7 of 3"):
        rerank(reranker(openai_api, cohere_api))
