"""The conversation as it was just before a historical turn.

The live conversation row holds only the latest memory and qualification status. What the
orchestrator saw at turn N is rebuilt from the conversation's earlier turns: a completed
turn moves memory and status on, a failed one does not, and the history is the last few
messages with their replies. Each completed turn keeps the memory its agent left
(``memory_after``: the facts as its extractor read them, a model's included); a turn
completed before turns kept it is replayed through the function the agents apply when they
commit a reply (``updated_memory``, reading facts with patterns). The status follows
``next_qualification``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Turn
from shared.db.turns import stage_message
from shared.providers.base import ConversationContext
from shared.schemas import Agent, ConversationMemory, Qualification, TurnStatus
from shared.turn.agents import next_qualification, updated_memory
from shared.turn.researcher import stored_research
from shared.turn.store import HISTORY_TURNS


def _conversation_turns(session: Session, turns: Sequence[Turn]) -> dict[uuid.UUID, list[Turn]]:
    """Every turn of the given turns' conversations up to the latest one asked for."""
    last_seq: dict[uuid.UUID, int] = defaultdict(int)
    for turn in turns:
        last_seq[turn.conversation_id] = max(last_seq[turn.conversation_id], turn.seq)
    rows = session.scalars(
        select(Turn)
        .where(Turn.conversation_id.in_(list(last_seq)), Turn.seq <= max(last_seq.values()))
        .order_by(Turn.conversation_id, Turn.seq)
    )
    by_conversation: dict[uuid.UUID, list[Turn]] = defaultdict(list)
    for row in rows:
        if row.seq <= last_seq[row.conversation_id]:
            by_conversation[row.conversation_id].append(row)
    return by_conversation


def _replay(
    conversation: list[Turn], wanted: set[uuid.UUID]
) -> dict[uuid.UUID, ConversationContext]:
    memory = ConversationMemory()
    qualification = Qualification.UNKNOWN
    history: list[dict[str, str]] = []
    contexts: dict[uuid.UUID, ConversationContext] = {}
    for turn in conversation:
        if turn.id in wanted:
            contexts[turn.id] = ConversationContext(
                tenant_id=turn.tenant_id,
                message=stage_message(turn),
                qualification_status=qualification,
                memory=memory,
                history=list(history[-HISTORY_TURNS:]),
            )
        if turn.status == TurnStatus.CANCELLED.value:
            continue  # its message is carried by the turn that interrupted it
        history.append({"message": turn.message, "reply": turn.agent_response or ""})
        if turn.status == TurnStatus.COMPLETED.value and turn.next_agent:
            memory = memory_left_by(turn, memory)
            qualification = next_qualification(qualification, turn.phase)
    return contexts


def memory_left_by(turn: Turn, before: ConversationMemory) -> ConversationMemory:
    """The conversation's memory after a completed turn: as the turn stored it, or replayed
    from the memory before it."""
    if turn.memory_after is not None:
        return ConversationMemory.from_stored(turn.memory_after)
    assert turn.next_agent is not None
    return updated_memory(
        before,
        turn,
        Agent(turn.next_agent),
        stored_research(turn),
        reply=turn.agent_response or "",
    )


def contexts_before(
    session: Session, turns: Sequence[Turn]
) -> dict[uuid.UUID, ConversationContext]:
    """For each turn, the context its orchestrator saw, read in one query per batch."""
    if not turns:
        return {}
    wanted = {turn.id for turn in turns}
    contexts: dict[uuid.UUID, ConversationContext] = {}
    for conversation in _conversation_turns(session, turns).values():
        contexts.update(_replay(conversation, wanted))
    return contexts
