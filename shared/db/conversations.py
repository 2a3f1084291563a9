"""A conversation as its tenant asks about it: its turns in order, its memory, its
qualification status. Looked up by the id the caller gave it, within one tenant."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Turn
from shared.errors import ConversationNotFound
from shared.schemas import Qualification


@dataclass(frozen=True)
class TurnBrief:
    id: str
    seq: int
    status: str
    message: str
    agent: str | None
    kb_information_level: str | None
    reply: str | None
    accepted_at: str


@dataclass(frozen=True)
class ConversationView:
    id: str  # the caller's id
    tenant_id: str
    qualification_status: Qualification
    memory: dict[str, Any]  # as stored (shared/schemas.py ``ConversationMemory``)
    created_at: str
    updated_at: str
    turns: list[TurnBrief] = field(default_factory=list)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def conversation_of(
    session: Session, *, tenant_id: str, conversation: str, limit: int = 200
) -> ConversationView:
    """The conversation and its first ``limit`` turns; ConversationNotFound when the tenant
    has none by that id."""
    row = session.scalar(
        select(Conversation).where(
            Conversation.tenant_id == tenant_id, Conversation.external_id == conversation
        )
    )
    if row is None:
        raise ConversationNotFound(f"conversation {conversation!r} does not exist")
    turns = session.scalars(
        select(Turn).where(Turn.conversation_id == row.id).order_by(Turn.seq).limit(limit)
    )
    return ConversationView(
        id=row.external_id,
        tenant_id=row.tenant_id,
        qualification_status=Qualification(row.qualification_status),
        memory=dict(row.contextual_memory),
        created_at=row.created_at.isoformat(),
        updated_at=row.updated_at.isoformat(),
        turns=[
            TurnBrief(
                id=str(t.id),
                seq=t.seq,
                status=t.status,
                message=t.message,
                agent=t.next_agent,
                kb_information_level=t.kb_information_level,
                reply=t.agent_response,
                accepted_at=_iso(t.accepted_at),
            )
            for t in turns
        ],
    )
