"""The five specialized agents. Each one ends the turn.

An agent uses the research already in the turn's row (no second retrieval, except in the
sequential topology, where it does the retrieval itself), streams its reply, and commits
the reply, the conversation's memory and its qualification status in one transaction.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select, update

from shared.config import get_settings
from shared.db.models import Conversation, Turn
from shared.db.session import session_scope
from shared.db.spans import SpanRecord, record_span
from shared.db.tenants import tenant_settings
from shared.db.turns import load_turn, release_conversation, write_stage_fields
from shared.errors import ChordlineError, StageConflict
from shared.providers.base import ReplyRequest, Usage
from shared.providers.registry import get_providers
from shared.schemas import Agent, KbLevel, Research, Stage, TurnStatus
from shared.streaming import ReplyStream, publish_end
from shared.turn.researcher import run_researcher, stored_research
from shared.turn.stage import (
    StageOrigin,
    conversation_context,
    finish_span,
    start_span,
    turn_deadline,
)

log = logging.getLogger(__name__)

FALLBACK_REPLY = (
    "Sorry, I could not put a full answer together just now. A member of our team "
    "will follow up with you shortly."
)

# How far along a conversation is; a turn moves it forward, never back.
QUALIFICATION_BY_PHASE = {
    "opening": "engaged",
    "discovery": "engaged",
    "qualification": "qualifying",
    "technical_evaluation": "evaluating",
    "content": "qualified",
    "closing": "qualified",
    "support": "customer",
    "handoff": "handed_off",
}
QUALIFICATION_ORDER = [
    "unknown",
    "engaged",
    "qualifying",
    "evaluating",
    "qualified",
    "customer",
    "handed_off",
]


def next_qualification(current: str, phase: str | None) -> str:
    proposed = QUALIFICATION_BY_PHASE.get(phase or "", current)
    rank = {name: i for i, name in enumerate(QUALIFICATION_ORDER)}
    return proposed if rank.get(proposed, 0) > rank.get(current, 0) else current


def updated_memory(
    memory: dict[str, object], turn: Turn, agent: Agent, research: Research | None
) -> dict[str, object]:
    earlier = memory.get("topics")
    topics = [str(t) for t in earlier] if isinstance(earlier, list) else []
    for hit in research.hits[:1] if research else []:
        if hit.title not in topics:
            topics.append(hit.title)
    turns = memory.get("turns", 0)
    return {
        **memory,
        "turns": (turns if isinstance(turns, int) else 0) + 1,
        "last_agent": agent.value,
        "last_phase": turn.phase,
        "last_intent": turn.intent,
        "topics": topics[-8:],
    }


def _generate(
    *, request: ReplyRequest, stream: ReplyStream, usage: Usage, deadline: float
) -> tuple[str, bool]:
    tokens: list[str] = []
    try:
        for token in get_providers().chat.stream_reply(
            request=request, usage=usage, deadline=deadline
        ):
            stream.token(token)
            tokens.append(token)
        return "".join(tokens), False
    except ChordlineError as exc:
        log.warning(
            "agent fallback",
            extra={
                "action": "stage_fallback",
                "turn_id": None,
                "stage": "agent",
                "reason": str(exc),
            },
        )
        stream.token(("\n" if tokens else "") + FALLBACK_REPLY)
        return FALLBACK_REPLY, True


def run_agent(turn_id: str, *, agent: Agent, retrieve: bool, origin: StageOrigin) -> str | None:
    """Answer the turn. Returns the id of the conversation's next turn, if one was waiting."""
    if retrieve:
        run_researcher(turn_id, origin)  # sequential topology: this agent's own retrieval
    span = start_span(turn_id, Stage.AGENT, origin)
    with session_scope() as session:
        turn = load_turn(session, turn_id)
        if turn.completed_at is not None:
            return None
        if turn.next_agent != agent.value:
            raise StageConflict(f"turn {turn_id} is routed to {turn.next_agent}, not {agent.value}")
        settings = tenant_settings(session, turn.tenant_id)
        context = conversation_context(session, turn)
        research = stored_research(turn)
        deadline = turn_deadline(turn)
    request = ReplyRequest(
        agent=agent,
        context=context,
        hits=research.hits if research else [],
        kb_information_level=research.kb_information_level if research else KbLevel.MISSING,
        routing_reason=turn.routing_reason or "",
        model=settings.models.agent,
    )
    usage = Usage()
    reply, fallback = _generate(
        request=request,
        stream=ReplyStream(turn_id, attempt=origin.delivery),
        usage=usage,
        deadline=deadline,
    )
    next_turn = _commit_reply(
        turn_id=turn_id,
        agent=agent,
        reply=reply,
        fallback=fallback,
        research=research,
        usage=usage,
        span=span,
    )
    publish_end(turn_id, TurnStatus.COMPLETED.value)
    return next_turn


def _commit_reply(
    *,
    turn_id: str,
    agent: Agent,
    reply: str,
    fallback: bool,
    research: Research | None,
    usage: Usage,
    span: SpanRecord,
) -> str | None:
    values = {
        "agent_response": reply,
        "agent_fallback": fallback,
        "completed_at": time.time(),
        "status": TurnStatus.COMPLETED.value,
    }
    with session_scope() as session:
        if not write_stage_fields(
            session, stage=Stage.AGENT, turn_id=turn_id, values=values, usage=usage.as_dict()
        ):
            return None  # another delivery committed the reply first: exactly one reply
        turn = load_turn(session, turn_id)
        conv = session.scalar(
            select(Conversation).where(Conversation.id == turn.conversation_id).with_for_update()
        )
        assert conv is not None
        session.execute(
            update(Conversation)
            .where(Conversation.id == conv.id)
            .values(
                contextual_memory=updated_memory(
                    dict(conv.contextual_memory), turn, agent, research
                ),
                qualification_status=next_qualification(conv.qualification_status, turn.phase),
            )
        )
        record_span(
            session,
            finish_span(
                span,
                usage=usage,
                fields=sorted(values),
                outcome="fallback" if fallback else "ok",
            ),
        )
        return release_conversation(
            session, turn=turn, stage_deadline_s=get_settings().turn.stage_deadline_s
        )
