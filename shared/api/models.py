"""Request and response bodies of the HTTP API: the OpenAPI schema is built from these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import Qualification


class TurnRequest(BaseModel):
    """A message from the customer, to be answered in its conversation."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(
        description="The customer's message (at most CHORDLINE_TURN_MAX_MESSAGE_CHARS characters).",
        examples=["Does it have a REST API?"],
    )


class TurnLinks(BaseModel):
    turn: str = Field(description="GET: the turn")
    stream: str = Field(description="GET: the reply as server-sent events")
    trace: str = Field(description="GET: the turn's stages as JSON")
    page: str = Field(description="The turn's page, for people")


class TurnAccepted(BaseModel):
    """The turn is committed in Postgres; its workflow runs now."""

    turn_id: str
    conversation_id: str
    links: TurnLinks


class TurnOut(BaseModel):
    """A turn as it is now."""

    id: str
    conversation_id: str
    seq: int
    status: str = Field(description="waiting, queued, routed, completed or failed")
    topology: str
    message: str
    phase: str | None
    proposed_agent: str | None
    agent: str | None = Field(description="The agent the merge routed the turn to")
    kb_information_level: str | None = Field(description="ACCURATE, PARTIAL or MISSING")
    routing_reason: str | None
    reply: str | None
    agent_fallback: bool | None
    failure_reason: str | None
    memory_written: dict[str, Any] | None = Field(
        description="The conversation memory as this turn's agent left it"
    )
    accepted_at: str = Field(description="ISO 8601, UTC")
    timings_ms: dict[str, float | None] = Field(
        description="Milliseconds from acceptance to each stage's end (null: not reached)"
    )
    links: TurnLinks


class TurnBrief(BaseModel):
    id: str
    seq: int
    status: str
    message: str
    agent: str | None
    kb_information_level: str | None
    reply: str | None
    accepted_at: str


class ConversationOut(BaseModel):
    """A conversation: its turns in order, its memory and its qualification status."""

    id: str
    qualification_status: Qualification
    memory: dict[str, Any]
    created_at: str
    updated_at: str
    turns: list[TurnBrief]


class StageOut(BaseModel):
    stage: str
    queue: str | None
    worker: str | None
    pid: int | None
    attempt: int
    outcome: str
    enqueued_ms: float | None
    started_ms: float
    finished_ms: float
    queue_wait_ms: float | None
    duration_ms: float
    fields_written: list[str]
    critical: bool


class CriticalSegment(BaseModel):
    stage: str
    ms: float


class TraceOut(BaseModel):
    """A turn's stages on its own time axis (0 ms: acceptance), as `chordline trace --json`."""

    turn_id: str
    tenant_id: str
    topology: str
    status: str
    next_agent: str | None
    kb_information_level: str | None
    latency_ms: float | None
    waited_on: str | None
    overlap_ms: float
    stages: list[StageOut]
    critical_path: list[CriticalSegment]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = Field(default=None, description="The field, header or setting at fault")
    limit: int | None = Field(default=None, description="The limit that was exceeded")
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Each invalid field of a request, with what is wrong"
    )
