"""The provider interfaces. Each has a real implementation and an offline one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shared.schemas import (
    Agent,
    ConversationMemory,
    CustomerFacts,
    KbLevel,
    Orchestration,
    Qualification,
    ResearchHit,
)


@dataclass
class Usage:
    """Calls and tokens a stage spent; stored with the turn so a tenant's cost can be summed.

    Real providers count what their API reports (``usage`` of OpenAI, ``billed_units`` of
    Cohere); offline ones estimate. ``calls`` are answered calls, ``retries`` the attempts
    that failed transiently and were tried again, ``search_units`` Cohere's rerank unit.
    """

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    search_units: int = 0
    retries: int = 0
    simulated_ms: float = 0.0
    # The simulated retrieval time drawn for this stage, once: a question asked in parts is
    # reranked once per part within the one retrieval the draw stands for. Not stored.
    simulated_retrieval_ms: float | None = None

    def add(
        self, *, calls: int = 1, tokens_in: int = 0, tokens_out: int = 0, search_units: int = 0
    ) -> None:
        self.calls += calls
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.search_units += search_units

    def absorb(self, other: Usage) -> None:
        """Counts ``other`` in this one (a call made beside the stage's own, in a thread)."""
        self.add(
            calls=other.calls,
            tokens_in=other.tokens_in,
            tokens_out=other.tokens_out,
            search_units=other.search_units,
        )
        self.retries += other.retries
        self.simulated_ms += other.simulated_ms

    def as_dict(self) -> dict[str, int]:
        counts = {"calls": self.calls, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out}
        if self.search_units:
            counts["search_units"] = self.search_units
        if self.retries:
            counts["retries"] = self.retries
        return counts


@dataclass(frozen=True)
class ConversationContext:
    """What the orchestrator and the agents know about the conversation so far."""

    tenant_id: str
    message: str
    qualification_status: Qualification = Qualification.UNKNOWN
    memory: ConversationMemory = field(default_factory=ConversationMemory)
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ReplyRequest:
    agent: Agent
    context: ConversationContext
    hits: Sequence[ResearchHit]
    kb_information_level: KbLevel
    routing_reason: str
    model: str


class ChatModel(Protocol):
    """The orchestrator's classifier and the agents' responder."""

    name: str

    def orchestrate(
        self, *, context: ConversationContext, model: str, usage: Usage, deadline: float
    ) -> Orchestration: ...

    def stream_reply(
        self, *, request: ReplyRequest, usage: Usage, deadline: float
    ) -> Iterator[str]: ...


class FactExtractor(Protocol):
    """Reads the facts a customer's message states about them (``CustomerFacts``), for the
    agent stage to merge into the conversation's memory."""

    name: str
    # True when extracting calls a model API (the agent stage then runs it beside the
    # streamed reply); False when it is local work of a few microseconds.
    calls_a_model: bool

    def extract_facts(
        self,
        *,
        message: str,
        memory: ConversationMemory,
        model: str,
        usage: Usage,
        deadline: float,
    ) -> CustomerFacts:
        """The facts ``message`` states (only those; the caller merges them into what
        ``memory`` holds). Raises a ``ChordlineError`` when the provider cannot answer."""
        ...


class Embedder(Protocol):
    """Vectors of one model and dimension; the knowledge base keys its storage on ``model``."""

    name: str
    model: str
    dim: int

    def embed(
        self, texts: Sequence[str], *, usage: Usage | None = None, deadline: float | None = None
    ) -> list[list[float]]:
        """One vector of ``dim`` floats per text, in order. ``deadline`` (epoch seconds) is
        the turn's when a stage embeds; ingestion passes none and gets the provider's own."""
        ...


class Reranker(Protocol):
    name: str

    def rerank(
        self, *, query: str, documents: Sequence[str], model: str, usage: Usage, deadline: float
    ) -> list[float]:
        """One relevance score in [0, 1] per document, in the documents' order."""
        ...
