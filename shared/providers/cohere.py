"""Cohere rerank through the v2 client (``cohere.ClientV2``), model per tenant.

The client is made with ``max_retries=0`` and a short timeout; ``retry.call_with_retries``
does the retrying, within the turn's budget. Relevance scores come back ordered by score;
they are put back in the documents' order, one per document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cohere
import httpx
from cohere.core.api_error import ApiError

from shared.config import COHERE_DEFAULT_BASE_URL, ProviderSettings
from shared.errors import ChordlineError
from shared.providers.base import Usage
from shared.providers.failures import (
    ProviderUnavailable,
    SecretScrubber,
    safe_url,
    status_failure,
)
from shared.providers.limits import LimitedCall
from shared.providers.retry import Clock, RetryPolicy, call_with_retries

PROVIDER = "cohere"
URL_SETTING = "COHERE_BASE_URL"
KEY_SETTING = "COHERE_API_KEY"
MODEL_SETTING = "the tenant setting models.rerank"


def cohere_client(settings: ProviderSettings) -> Any:
    """One v2 client per process; no SDK retries, short default timeout."""
    assert settings.cohere_api_key is not None
    return cohere.ClientV2(
        api_key=settings.cohere_api_key.get_secret_value(),
        base_url=settings.cohere_base_url or COHERE_DEFAULT_BASE_URL,
        timeout=settings.request_timeout_s,
        max_retries=0,
        log_warning_experimental_features=False,
    )


class CohereFailures:
    """Turns what the cohere SDK raised into a chordline error (see ``failures``)."""

    def __init__(self, *, scrub: SecretScrubber, endpoint: str) -> None:
        self.scrub, self.endpoint = scrub, endpoint

    def classifier(self, *, model: str) -> Callable[[Exception], ChordlineError]:
        return lambda exc: self.classify(exc, model=model)

    def classify(self, exc: Exception, *, model: str) -> ChordlineError:
        if isinstance(exc, httpx.TimeoutException):
            return ProviderUnavailable(f"{PROVIDER}: timed out waiting for {self.endpoint}")
        if isinstance(exc, httpx.TransportError):
            return ProviderUnavailable(
                f"{PROVIDER}: cannot reach {self.endpoint} ({type(exc).__name__})"
            )
        if isinstance(exc, ApiError):
            status = exc.status_code or 0
            if 200 <= status < 300:  # a 2xx whose body did not parse
                return ProviderUnavailable(f"{PROVIDER}: malformed response from {self.endpoint}")
            return status_failure(
                provider=PROVIDER,
                status=status,
                body=exc.body,
                headers=exc.headers or {},
                scrub=self.scrub,
                key_setting=KEY_SETTING,
                url_setting=URL_SETTING,
                model=model,
                model_setting=MODEL_SETTING,
                endpoint=self.endpoint,
            )
        if isinstance(exc, ValueError):  # JSON or schema trouble in a 2xx body
            return ProviderUnavailable(f"{PROVIDER}: malformed response from {self.endpoint}")
        raise exc


def scores_in_document_order(results: Sequence[Any], count: int) -> list[float]:
    """Cohere returns results ordered by relevance, each with its document's index."""
    scores = [0.0] * count
    seen = 0
    for item in results:
        index = int(item.index)
        if not 0 <= index < count:
            raise ProviderUnavailable(f"{PROVIDER}: a result names document {index} of {count}")
        scores[index] = min(1.0, max(0.0, float(item.relevance_score)))
        seen += 1
    if seen != count:
        raise ProviderUnavailable(f"{PROVIDER}: {seen} scores for {count} documents")
    return scores


class CohereReranker:
    name = PROVIDER

    def __init__(
        self,
        client: Any,
        *,
        policy: RetryPolicy,
        scrub: SecretScrubber,
        base_url: str | None,
        clock: Clock | None = None,
    ) -> None:
        self.client, self.policy = client, policy
        self.failures = CohereFailures(
            scrub=scrub, endpoint=safe_url(base_url or COHERE_DEFAULT_BASE_URL)
        )
        self.clock = clock or Clock()

    def rerank(
        self, *, query: str, documents: Sequence[str], model: str, usage: Usage, deadline: float
    ) -> list[float]:
        if not documents:
            return []
        response = call_with_retries(
            lambda timeout: self.client.rerank(
                model=model,
                query=query,
                documents=list(documents),
                request_options={
                    "timeout": httpx.Timeout(
                        timeout, connect=min(self.policy.connect_timeout_s, timeout)
                    ),
                    "max_retries": 0,
                },
            ),
            what=f"{PROVIDER} rerank",
            deadline=deadline,
            policy=self.policy,
            limited=LimitedCall(PROVIDER, model),
            classify=self.failures.classifier(model=model),
            usage=usage,
            clock=self.clock,
        )
        scores = scores_in_document_order(response.results, len(documents))
        billed = response.meta.billed_units if response.meta else None
        usage.add(search_units=int(billed.search_units or 0) if billed else 1)
        return scores
