"""OpenAI (or any OpenAI-compatible server): the orchestrator, the agents, the embeddings.

- The orchestrator asks for structured output (a strict JSON schema, ``prompts.RouteAnswer``);
  a refusal, a cut-off or an answer outside the schema raises ``InvalidAnswer`` and the
  stage takes its default route, recording why.
- The agent stage's fact extraction asks for structured output too (a strict JSON schema
  derived from ``CustomerFacts``, ``prompts.FACTS_SCHEMA``); a failure raises, and the
  stage reads the facts with patterns instead.
- Agents stream: tokens are yielded as the server sends them, and the final usage chunk
  (``stream_options.include_usage``) is what the turn is charged.
- Embeddings are batched, with the model and dimension fixed per deployment.

The client is made with ``max_retries=0`` and short timeouts; ``retry.call_with_retries``
does the retrying, within the turn's budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from shared.config import KNOWN_OPENAI_EMBEDDING_DIMS, ProviderSettings
from shared.errors import ChordlineError
from shared.providers.base import ConversationContext, ReplyRequest, Usage
from shared.providers.failures import (
    InvalidAnswer,
    ProviderBudgetExceeded,
    ProviderUnavailable,
    SecretScrubber,
    config_error,
    safe_url,
    status_failure,
)
from shared.providers.limits import LimitedCall
from shared.providers.prompts import (
    FACTS_RESPONSE_FORMAT,
    ROUTE_RESPONSE_FORMAT,
    RouteAnswer,
    agent_messages,
    facts_answer,
    facts_messages,
    orchestrator_messages,
)
from shared.providers.retry import Clock, RetryPolicy, call_with_retries
from shared.schemas import ConversationMemory, CustomerFacts, Orchestration
from shared.text import count_tokens

PROVIDER = "openai"
# What a routing answer (a small JSON object) counts against a tokens-per-minute limit.
ORCHESTRATION_TOKENS_OUT = 100
# The most a facts answer (a JSON object of eight short fields) may take, and counts.
FACTS_TOKENS_OUT = 300
URL_SETTING = "OPENAI_BASE_URL"
KEY_SETTING = "OPENAI_API_KEY"
EMBEDDING_MODEL_SETTING = "CHORDLINE_OPENAI_EMBEDDING_MODEL"


def openai_client(settings: ProviderSettings) -> openai.OpenAI:
    """One client per process (thread-safe); no SDK retries, short default timeouts."""
    assert settings.openai_api_key is not None
    return openai.OpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=openai.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
    )


class OpenAIFailures:
    """Turns what the openai SDK raised into a chordline error (see ``failures``)."""

    def __init__(self, *, scrub: SecretScrubber, endpoint: str) -> None:
        self.scrub, self.endpoint = scrub, endpoint

    def classifier(
        self, *, model: str, model_setting: str
    ) -> Callable[[Exception], ChordlineError]:
        return lambda exc: self.classify(exc, model=model, model_setting=model_setting)

    def classify(self, exc: Exception, *, model: str, model_setting: str) -> ChordlineError:
        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(f"{PROVIDER}: timed out waiting for {self.endpoint}")
        if isinstance(exc, openai.APIConnectionError):
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            return ProviderUnavailable(f"{PROVIDER}: cannot reach {self.endpoint} ({cause})")
        if isinstance(exc, openai.APIStatusError):
            return status_failure(
                provider=PROVIDER,
                status=exc.status_code,
                body=exc.body,
                headers=exc.response.headers,
                scrub=self.scrub,
                key_setting=KEY_SETTING,
                url_setting=URL_SETTING,
                model=model,
                model_setting=model_setting,
                endpoint=self.endpoint,
            )
        if isinstance(
            exc, openai.APIResponseValidationError | json.JSONDecodeError | pydantic.ValidationError
        ):
            return ProviderUnavailable(f"{PROVIDER}: malformed response from {self.endpoint}")
        if isinstance(exc, openai.APIError):  # e.g. an error event inside a stream
            return ProviderUnavailable(f"{PROVIDER}: {self.scrub(exc.message)[:240]}")
        raise exc


def _timeout(policy: RetryPolicy, seconds: float) -> openai.Timeout:
    return openai.Timeout(seconds, connect=min(policy.connect_timeout_s, seconds))


def answer_content(completion: ChatCompletion, *, what: str, task: str) -> str:
    """The text of a structured-output answer, or ``InvalidAnswer`` saying why there is
    none (``task``: what the model refused to do, for the message)."""
    if not completion.choices:
        raise InvalidAnswer(f"{what} returned no answer")
    choice = completion.choices[0]
    message = choice.message
    if message.refusal:
        raise InvalidAnswer(f"{what} refused to {task}: {message.refusal[:200]}")
    if choice.finish_reason == "length":
        raise InvalidAnswer(f"{what} ran out of tokens before finishing its answer")
    if choice.finish_reason == "content_filter":
        raise InvalidAnswer(f"{what} answer was withheld by the content filter")
    if not message.content:
        raise InvalidAnswer(f"{what} returned an empty answer")
    return message.content


def _invalid(what: str, exc: pydantic.ValidationError) -> InvalidAnswer:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "answer"
    return InvalidAnswer(
        f"{what} returned an invalid answer ({field}: {first.get('msg', 'invalid')})"
    )


def route_from_completion(completion: ChatCompletion, *, model: str) -> Orchestration:
    """The orchestration in a structured-output answer, or ``InvalidAnswer`` saying why not."""
    what = f"{PROVIDER} model {model!r}"
    content = answer_content(completion, what=what, task="route the turn")
    try:
        answer = RouteAnswer.model_validate_json(content)
    except pydantic.ValidationError as exc:
        raise _invalid(what, exc) from None
    return Orchestration(
        phase=answer.phase,
        intent=answer.intent,
        proposed_agent=answer.proposed_agent,
        confidence=round(answer.confidence, 3),
        handoff=answer.handoff,
    )


def facts_from_completion(completion: ChatCompletion, *, model: str) -> CustomerFacts:
    """The customer's facts in a structured-output answer, or ``InvalidAnswer``."""
    what = f"{PROVIDER} model {model!r}"
    content = answer_content(completion, what=what, task="extract the customer's facts")
    try:
        return facts_answer(content)
    except pydantic.ValidationError as exc:
        raise _invalid(what, exc) from None
    except ValueError as exc:  # not JSON, or not an object
        raise InvalidAnswer(
            f"{what} returned an invalid answer (not a JSON object: {exc})"[:300]
        ) from None


def _prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    return sum(count_tokens(m["content"]) for m in messages)


class OpenAIChatModel:
    """The orchestrator (structured output), the agents (streamed replies) and the agent
    stage's fact extraction (structured output): a ``ChatModel`` and a ``FactExtractor``."""

    name = PROVIDER
    calls_a_model = True

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        policy: RetryPolicy,
        max_reply_tokens: int,
        scrub: SecretScrubber,
        clock: Clock | None = None,
    ) -> None:
        self.client, self.policy, self.max_reply_tokens = client, policy, max_reply_tokens
        self.endpoint = safe_url(str(client.base_url))
        self.failures = OpenAIFailures(scrub=scrub, endpoint=self.endpoint)
        self.clock = clock or Clock()

    def available_models(self, *, deadline: float) -> set[str]:
        """The model ids the server lists (``GET /models``: free, for the doctor)."""
        page = call_with_retries(
            lambda timeout: self.client.models.list(timeout=_timeout(self.policy, timeout)),
            what=f"{PROVIDER} models",
            deadline=deadline,
            policy=self.policy,
            classify=self.failures.classifier(model="-", model_setting="the model settings"),
            clock=self.clock,
        )
        return {model.id for model in page.data}

    def orchestrate(
        self, *, context: ConversationContext, model: str, usage: Usage, deadline: float
    ) -> Orchestration:
        completion = self._structured_completion(
            orchestrator_messages(context),
            response_format=ROUTE_RESPONSE_FORMAT,
            model=model,
            model_setting="the tenant setting models.orchestrator",
            what=f"{PROVIDER} orchestrator",
            tokens_out=ORCHESTRATION_TOKENS_OUT,
            usage=usage,
            deadline=deadline,
        )
        return route_from_completion(completion, model=model)

    def extract_facts(
        self,
        *,
        message: str,
        memory: ConversationMemory,
        model: str,
        usage: Usage,
        deadline: float,
    ) -> CustomerFacts:
        completion = self._structured_completion(
            facts_messages(message, memory),
            response_format=FACTS_RESPONSE_FORMAT,
            model=model,
            model_setting="the tenant setting models.agent",
            what=f"{PROVIDER} facts",
            tokens_out=FACTS_TOKENS_OUT,
            cap_tokens_out=True,
            usage=usage,
            deadline=deadline,
        )
        return facts_from_completion(completion, model=model)

    def _structured_completion(
        self,
        messages: list[dict[str, str]],
        *,
        response_format: dict[str, Any],
        model: str,
        model_setting: str,
        what: str,
        tokens_out: int,
        usage: Usage,
        deadline: float,
        cap_tokens_out: bool = False,
    ) -> ChatCompletion:
        """One chat completion answered in a JSON schema (Structured Outputs), retried within
        the deadline, its tokens counted in ``usage`` (estimated when the API reports none).
        ``tokens_out`` is what the call reserves against the model's limits; with
        ``cap_tokens_out`` the request also caps the answer at it."""
        completion = call_with_retries(
            lambda timeout: self.client.chat.completions.create(
                model=model,
                messages=cast(Any, messages),
                response_format=cast(Any, response_format),
                max_completion_tokens=tokens_out if cap_tokens_out else openai.omit,
                timeout=_timeout(self.policy, timeout),
            ),
            what=what,
            deadline=deadline,
            policy=self.policy,
            classify=self.failures.classifier(model=model, model_setting=model_setting),
            usage=usage,
            clock=self.clock,
            limited=LimitedCall(PROVIDER, model, _prompt_tokens(messages) + tokens_out),
        )
        reported = completion.usage
        usage.add(
            tokens_in=reported.prompt_tokens if reported else _prompt_tokens(messages),
            tokens_out=reported.completion_tokens if reported else 0,
        )
        return completion

    def stream_reply(
        self, *, request: ReplyRequest, usage: Usage, deadline: float
    ) -> Iterator[str]:
        messages = agent_messages(request)
        classify = self.failures.classifier(
            model=request.model, model_setting="the tenant setting models.agent"
        )
        # Retried only until the stream is open: once tokens have gone out, a retry would
        # repeat them; a failure after that ends the reply with the stage's fallback.
        stream = call_with_retries(
            lambda timeout: self.client.chat.completions.create(
                model=request.model,
                messages=cast(Any, messages),
                stream=True,
                stream_options={"include_usage": True},
                max_completion_tokens=self.max_reply_tokens,
                timeout=_timeout(self.policy, timeout),
            ),
            what=f"{PROVIDER} agent",
            deadline=deadline,
            policy=self.policy,
            classify=classify,
            usage=usage,
            clock=self.clock,
            limited=LimitedCall(
                PROVIDER, request.model, _prompt_tokens(messages) + self.max_reply_tokens
            ),
        )
        yield from self._tokens(
            stream,
            model=request.model,
            messages=messages,
            usage=usage,
            deadline=deadline,
            classify=classify,
        )

    def _tokens(
        self,
        stream: openai.Stream[ChatCompletionChunk],
        *,
        model: str,
        messages: list[dict[str, str]],
        usage: Usage,
        deadline: float,
        classify: Callable[[Exception], ChordlineError],
    ) -> Iterator[str]:
        produced: list[str] = []
        reported = None
        try:
            for chunk in stream:
                reported = chunk.usage or reported
                for choice in chunk.choices:
                    text = choice.delta.content or choice.delta.refusal
                    if text:
                        produced.append(text)
                        yield text
                if self.clock.now() > deadline:
                    raise ProviderBudgetExceeded(
                        f"{PROVIDER} agent: the reply was still streaming when the turn's "
                        "budget ran out"
                    )
            if not produced:
                raise InvalidAnswer(f"{PROVIDER} model {model!r} sent an empty reply")
        except ChordlineError:
            raise
        except Exception as exc:
            raise classify(exc) from None
        finally:
            stream.close()
            usage.add(
                tokens_in=reported.prompt_tokens if reported else _prompt_tokens(messages),
                tokens_out=(
                    reported.completion_tokens if reported else count_tokens("".join(produced))
                ),
            )


def embedding_dim(model: str, configured: int | None) -> int:
    """The vector size of an embedding model, or a clear error when it must be configured."""
    if configured is not None:
        return configured
    if model in KNOWN_OPENAI_EMBEDDING_DIMS:
        return KNOWN_OPENAI_EMBEDDING_DIMS[model]
    raise config_error(
        PROVIDER,
        f"the vector size of embedding model {model!r} is not known",
        "set CHORDLINE_OPENAI_EMBEDDING_DIM",
    )


class OpenAIEmbedder:
    """Batched embeddings of one model and dimension (``model`` / ``dim``)."""

    name = PROVIDER

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        model: str,
        dim: int,
        shorten: bool,
        batch: int,
        policy: RetryPolicy,
        ingest_budget_s: float,
        scrub: SecretScrubber,
        clock: Clock | None = None,
    ) -> None:
        self.client, self.model, self.dim, self.shorten = client, model, dim, shorten
        self.batch, self.policy, self.ingest_budget_s = batch, policy, ingest_budget_s
        self.failures = OpenAIFailures(scrub=scrub, endpoint=safe_url(str(client.base_url)))
        self.clock = clock or Clock()

    def embed(
        self, texts: Sequence[str], *, usage: Usage | None = None, deadline: float | None = None
    ) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch):
            batch_deadline = (
                deadline if deadline is not None else self.clock.now() + self.ingest_budget_s
            )
            vectors.extend(
                self._embed_batch(
                    list(texts[start : start + self.batch]), usage=usage, deadline=batch_deadline
                )
            )
        return vectors

    def _embed_batch(
        self, texts: list[str], *, usage: Usage | None, deadline: float
    ) -> list[list[float]]:
        response = call_with_retries(
            lambda timeout: self.client.embeddings.create(
                model=self.model,
                input=texts,
                encoding_format="float",
                dimensions=self.dim if self.shorten else openai.omit,
                timeout=_timeout(self.policy, timeout),
            ),
            what=f"{PROVIDER} embeddings",
            deadline=deadline,
            policy=self.policy,
            classify=self.failures.classifier(
                model=self.model, model_setting=EMBEDDING_MODEL_SETTING
            ),
            usage=usage,
            clock=self.clock,
            limited=LimitedCall(PROVIDER, self.model, sum(count_tokens(t) for t in texts)),
        )
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(texts):
            raise ProviderUnavailable(
                f"{PROVIDER} embeddings: {len(data)} vectors for {len(texts)} texts"
            )
        for item in data:
            if len(item.embedding) != self.dim:
                raise config_error(
                    PROVIDER,
                    f"embedding model {self.model!r} returned {len(item.embedding)}-dimensional "
                    f"vectors, not {self.dim}",
                    "set CHORDLINE_OPENAI_EMBEDDING_DIM to the model's size",
                )
        if usage is not None:
            reported = response.usage
            usage.add(
                tokens_in=reported.prompt_tokens
                if reported
                else sum(count_tokens(t) for t in texts)
            )
        return [list(item.embedding) for item in data]
