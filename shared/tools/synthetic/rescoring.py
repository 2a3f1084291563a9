"""A synthetic conversation history, for re-scoring benchmarks and tests.

Real histories take a live turn's time per turn to build. This writes finished turns
straight into Postgres instead: conversations of a few turns, messages drawn (seeded) from
the questions a sales and support chat sees about the demo product, spread over past days.
Each message's historical decision is what the pipeline decides for it (the offline
classifier, the tenant's knowledge base, the routing rule), computed once per distinct
message. Nothing is dispatched; the turns exist only as history.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from shared.db.models import Conversation, Turn
from shared.db.session import session_scope
from shared.db.tenants import require_tenant
from shared.errors import InvalidInput
from shared.kb.research import research_question
from shared.providers.base import ConversationContext, Usage
from shared.providers.intent import classify
from shared.schemas import Orchestration, Research, RoutingDecision, TurnStatus
from shared.tools.bench.turns import QUESTIONS as BENCH_QUESTIONS
from shared.tools.demo.conversation import SCRIPT
from shared.turn.routing import route_turn

QUESTIONS = (
    *SCRIPT,
    *BENCH_QUESTIONS,
    "Do you support data residency in the EU?",
    "What is your uptime SLA?",
    "Can we self-host Halyard on our own servers?",
    "The mobile app crashes when I scan a pallet label.",
    "Is there a free trial?",
    "Could you draft a one-pager for our operations team?",
    "What's the weather like over there?",
)
MAX_TURNS = 2_000_000
INSERT_CHUNK = 5_000


@dataclass(frozen=True)
class HistoricalDecision:
    orchestration: Orchestration
    research: Research
    decision: RoutingDecision


@dataclass(frozen=True)
class GeneratedHistory:
    tenant_id: str
    conversations: int
    turns: int
    seconds: float


def decide(tenant_id: str, message: str) -> HistoricalDecision:
    """What the pipeline decides for a message opening a conversation, offline."""
    with session_scope() as session:
        settings = require_tenant(session, tenant_id)
    context = ConversationContext(tenant_id=tenant_id, message=message)
    orchestration = classify(context)
    research = research_question(
        tenant_id=tenant_id,
        question=message,
        settings=settings,
        usage=Usage(),
        deadline=time.time() + 60,
    )
    return HistoricalDecision(orchestration, research, route_turn(orchestration, research))


def _turn_row(
    *,
    tenant_id: str,
    conversation_id: uuid.UUID,
    seq: int,
    message: str,
    at: datetime,
    decided: HistoricalDecision,
) -> dict[str, Any]:
    o, r, d = decided.orchestration, decided.research, decided.decision
    epoch = at.timestamp()
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "conversation_id": conversation_id,
        "seq": seq,
        "message": message,
        "topology": "parallel",
        "status": TurnStatus.COMPLETED.value,
        "attempts": 1,
        "created_at": at,
        "accepted_at": epoch,
        "phase": o.phase.value,
        "intent": o.intent,
        "proposed_agent": o.proposed_agent.value,
        "confidence": o.confidence,
        "handoff": o.handoff,
        "orchestrated_at": epoch + 0.6,
        "research_results": [h.model_dump(mode="json") for h in r.hits],
        "kb_information_level": r.kb_information_level.value,
        "researched_at": epoch + 0.5,
        "next_agent": d.next_agent.value,
        "routing_reason": d.routing_reason,
        "routed_at": epoch + 0.65,
        "agent_response": f"({d.next_agent.value} answered)",
        "agent_fallback": False,
        "completed_at": epoch + 2.0,
        "usage": {},
    }


def generate_history(
    *,
    tenant_id: str,
    turns: int,
    turns_per_conversation: int = 6,
    days: int = 30,
    seed: int = 7,
) -> GeneratedHistory:
    """Write ``turns`` finished turns of the tenant, in new conversations."""
    if not 1 <= turns <= MAX_TURNS:
        raise InvalidInput("--turns", f"is {turns}; it must be between 1 and {MAX_TURNS:,}")
    if not 1 <= turns_per_conversation <= 100:
        raise InvalidInput("--per-conversation", "must be between 1 and 100")
    started = time.perf_counter()
    decided = {message: decide(tenant_id, message) for message in QUESTIONS}
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    conversations: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    while len(rows) < turns:
        conversation_id = uuid.uuid4()
        length = min(turns_per_conversation, turns - len(rows))
        opened = now - timedelta(seconds=rng.uniform(3600, days * 86_400))
        conversations.append(
            {
                "id": conversation_id,
                "tenant_id": tenant_id,
                "external_id": f"history-{tag}-{len(conversations)}",
                "next_seq": length + 1,
            }
        )
        for seq in range(1, length + 1):
            message = rng.choice(QUESTIONS)
            at = opened + timedelta(minutes=2 * seq)
            rows.append(
                _turn_row(
                    tenant_id=tenant_id,
                    conversation_id=conversation_id,
                    seq=seq,
                    message=message,
                    at=at,
                    decided=decided[message],
                )
            )
    with session_scope() as session:
        for i in range(0, len(conversations), INSERT_CHUNK):
            session.execute(insert(Conversation), conversations[i : i + INSERT_CHUNK])
        for i in range(0, len(rows), INSERT_CHUNK):
            session.execute(insert(Turn), rows[i : i + INSERT_CHUNK])
    return GeneratedHistory(
        tenant_id=tenant_id,
        conversations=len(conversations),
        turns=len(rows),
        seconds=time.perf_counter() - started,
    )
