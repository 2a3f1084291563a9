"""Pydantic models of every stage's input and output, and of per-tenant settings."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator, with_config
from typing_extensions import TypedDict


class Agent(StrEnum):
    DISCOVERY = "discovery"
    SUPPORT = "support"
    TECHNICAL_CONSULTANT = "technical_consultant"
    ADAPTIVE_RESPONSE = "adaptive_response"
    CONTENT_GENERATOR = "content_generator"


class KbLevel(StrEnum):
    ACCURATE = "ACCURATE"
    PARTIAL = "PARTIAL"
    MISSING = "MISSING"


class Phase(StrEnum):
    OPENING = "opening"
    DISCOVERY = "discovery"
    QUALIFICATION = "qualification"
    TECHNICAL_EVALUATION = "technical_evaluation"
    SUPPORT = "support"
    CONTENT = "content"
    CLOSING = "closing"
    HANDOFF = "handoff"


class TurnStatus(StrEnum):
    HELD = "held"  # accepted over its tenant's admission limit: dispatched when there is room
    WAITING = "waiting"  # behind another turn of the same conversation
    QUEUED = "queued"
    ROUTED = "routed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # interrupted by a later message of its conversation


TERMINAL_STATUSES = frozenset({TurnStatus.COMPLETED, TurnStatus.FAILED, TurnStatus.CANCELLED})


class Qualification(StrEnum):
    """How far along a conversation is (conversations.qualification_status), in order: a
    turn moves it forward, never back (shared/turn/agents.py ``next_qualification``)."""

    UNKNOWN = "unknown"
    ENGAGED = "engaged"
    QUALIFYING = "qualifying"
    EVALUATING = "evaluating"
    QUALIFIED = "qualified"
    CUSTOMER = "customer"
    HANDED_OFF = "handed_off"


@with_config(ConfigDict(extra="allow"))
class CustomerFacts(TypedDict, total=False):
    """What the customer said about themselves (shared/customer_facts.py): the
    conversation's qualification record, in its memory as ``facts``."""

    company: str
    sites: int
    people: int
    current_tool: str
    budget: str
    timeline: str
    decision_makers: list[str]
    needs: list[str]


class ConversationMemory(BaseModel):
    """What a conversation remembers (conversations.contextual_memory), as the agent that
    ends each turn leaves it.

    Stored as the JSON ``to_stored`` gives. ``from_stored`` reads any stored document:
    keys it does not know are kept (and written back), and a value of the wrong type is
    dropped, as if it had never been written, rather than failing the turn.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    turns: int = Field(default=0, ge=0)  # turns answered
    last_agent: Agent | None = None
    last_phase: Phase | None = None
    last_intent: str | None = None
    topics: list[str] = Field(default_factory=list)  # titles of the top hits, last 8
    furthest_phase: Phase | None = None  # the furthest sales phase reached
    facts: CustomerFacts = Field(default_factory=CustomerFacts)
    # What discovery has asked the customer for (fact keys, and "trial" for the offer of a
    # trial), so that a question the customer let pass is not put again, however long ago.
    asked: list[str] = Field(default_factory=list)

    @classmethod
    def from_stored(cls, stored: Any) -> ConversationMemory:
        data = dict(stored) if isinstance(stored, dict) else {}
        for _ in range(32):  # each pass drops one bad value
            try:
                return cls.model_validate(data)
            except ValidationError as exc:
                data = _without(data, exc.errors()[0]["loc"])
        return cls()

    def to_stored(self) -> dict[str, Any]:
        """The JSON document kept in the conversation's row: ``furthest_phase``, ``facts``
        and ``asked`` only once known, as they have always been written."""
        stored = self.model_dump(mode="json")
        if self.furthest_phase is None:
            del stored["furthest_phase"]
        if not self.facts:
            del stored["facts"]
        if not self.asked:
            del stored["asked"]
        return stored


def _without(data: Any, loc: tuple[int | str, ...]) -> Any:
    """A copy of ``data`` without the value at ``loc`` (a key of a dict, an item of a list)."""
    if not loc:
        return {}
    head, rest = loc[0], loc[1:]
    if isinstance(data, dict):
        if head not in data:
            return data
        copy = dict(data)
        if rest and isinstance(copy[head], dict | list):
            copy[head] = _without(copy[head], rest)
        else:
            del copy[head]
        return copy
    if isinstance(data, list) and isinstance(head, int) and 0 <= head < len(data):
        items = list(data)
        if rest and isinstance(items[head], dict | list):
            items[head] = _without(items[head], rest)
        else:
            del items[head]
        return items
    return data


class Stage(StrEnum):
    ORCHESTRATOR = "orchestrator"
    RESEARCHER = "researcher"
    MERGE = "merge"
    AGENT = "agent"


class Topology(StrEnum):
    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"
    KB_FIRST = "kb_first"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


class Orchestration(Frozen):
    """What the orchestrator decided: where the conversation is and who should answer."""

    phase: Phase
    intent: str = Field(max_length=64)
    proposed_agent: Agent
    confidence: Confidence
    handoff: bool = False
    fallback_reason: str | None = None


class ResearchHit(Frozen):
    chunk_id: int
    document_id: str
    title: str
    text: str
    score: float
    vector_rank: int | None = None
    text_rank: int | None = None


class Research(Frozen):
    """What the knowledge base says about the message."""

    hits: list[ResearchHit] = Field(default_factory=list)
    kb_information_level: KbLevel
    retrieval_failed: bool = False
    reason: str | None = None
    # A question asking several things: each part and its top score (graded part by part).
    parts: list[tuple[str, float]] = Field(default_factory=list)


class RoutingDecision(Frozen):
    next_agent: Agent
    routing_reason: str = Field(max_length=500)


class AgentReply(Frozen):
    text: str
    fallback: bool = False
    note: str | None = None  # why the agent fell back, when it did


class LevelThresholds(Frozen):
    """Reranked-score cut-offs: top score >= accurate is ACCURATE, >= partial is PARTIAL.

    A tenant's own calibration (after an ingest that changes its knowledge base) sets them,
    unless ``pinned``: setting either threshold by hand pins both."""

    accurate: Confidence = 0.74
    partial: Confidence = 0.342
    pinned: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> LevelThresholds:
        if self.partial > self.accurate:
            raise ValueError("thresholds.partial must not exceed thresholds.accurate")
        return self


class StageModels(Frozen):
    orchestrator: str = "gpt-4o-mini"
    agent: str = "gpt-4o-mini"
    embedding: str = "text-embedding-3-small"
    rerank: str = "rerank-v3.5"


class Admission(Frozen):
    """How many turns of a tenant may be in flight at once, and how fast new ones may come.

    ``None`` switches a limit off. Over a limit, ``over_limit`` decides: ``refuse`` raises
    ``AdmissionRefused`` (with ``retry_after_s``); ``hold`` accepts the turn and dispatches
    it, in order, once the tenant is under its limits again, holding at most ``hold_limit``
    turns for at most ``hold_max_s`` seconds each (beyond that: refused, or failed).
    """

    max_in_flight: int | None = Field(default=500, ge=1, le=100_000)
    turns_per_s: float | None = Field(default=200.0, gt=0, le=100_000)
    burst: int = Field(default=400, ge=1, le=1_000_000)
    over_limit: Literal["refuse", "hold"] = "refuse"
    hold_limit: int = Field(default=500, ge=1, le=1_000_000)
    hold_max_s: float = Field(default=60.0, gt=0, le=3600)


# Keys that once were settings and no longer are. ``short_circuit_research`` was accepted
# but never read by any stage (routing before the researcher answers was never built).
RETIRED_SETTINGS = frozenset({"short_circuit_research"})


class TenantSettings(Frozen):
    """Per-tenant policy. Unknown keys are refused, so a typo never silently does nothing."""

    topology: Topology = Topology.PARALLEL
    researcher_gate: Literal["always", "gated"] = "always"
    in_flight_policy: Literal["queue", "reject", "interrupt"] = "queue"
    thresholds: LevelThresholds = Field(default_factory=LevelThresholds)
    models: StageModels = Field(default_factory=StageModels)
    top_k: int = Field(default=5, ge=1, le=50)
    candidates: int = Field(default=40, ge=1, le=500)
    admission: Admission = Field(default_factory=Admission)

    @model_validator(mode="before")
    @classmethod
    def _without_retired_keys(cls, data: Any) -> Any:
        """Settings stored before a key was retired still load; setting it is refused."""
        if isinstance(data, dict) and RETIRED_SETTINGS & data.keys():
            return {k: v for k, v in data.items() if k not in RETIRED_SETTINGS}
        return data

    def with_overrides(self, overrides: dict[str, Any]) -> TenantSettings:
        """A copy with dotted-key overrides applied (``thresholds.accurate=0.7``), validated."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            target = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(target.get(part), dict):
                    raise KeyError(dotted)
                target = target[part]
            if leaf not in target:
                raise KeyError(dotted)
            target[leaf] = value
        return TenantSettings.model_validate(data)
