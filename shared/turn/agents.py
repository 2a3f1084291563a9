"""The five specialized agents. Each one ends the turn.

An agent uses the research already in the turn's row (no second retrieval, except in the
sequential topology, where it does the retrieval itself), streams its reply, and commits
the reply, the conversation's memory and its qualification status in one transaction.

The customer's facts in the message (``CustomerFacts``) are read by the providers'
``FactExtractor``: patterns offline, at commit time, as before; a structured-output call
when chat is on OpenAI. That call runs in a thread beside the streamed reply, not before
it, so it adds nothing to the time to the first token: the reply does not need it (the
model reads the message itself, and the facts already remembered are in its brief), only
the memory committed after the reply does, and the agent waits for it there (it ends
within the turn's budget). Any failure of the call (timeout, refusal, invalid answer,
provider error) is logged (``facts_fallback``, with the reason) and the facts are read with
patterns instead: it never fails the turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.admission import end_in_redis, let_go_safely
from shared.config import get_settings
from shared.customer_facts import facts_in, questions_in, remembered_facts
from shared.db.direct import direct_connection
from shared.db.spans import SpanRecord
from shared.db.turns import Completion, TurnRecord, complete_turn
from shared.errors import ChordlineError, StageConflict
from shared.providers.base import FactExtractor, ReplyRequest, Usage
from shared.providers.intent import furthest_phase
from shared.providers.registry import get_providers
from shared.runtime import Resource, runtime
from shared.schemas import (
    Agent,
    AgentReply,
    ConversationMemory,
    CustomerFacts,
    KbLevel,
    Phase,
    Qualification,
    Research,
    Stage,
    TurnStatus,
)
from shared.streaming import ReplyStream, announce_end
from shared.turn.researcher import run_researcher, stored_research
from shared.turn.stage import (
    StageOrigin,
    ensure_budget_left,
    finish_span,
    load_stage_inputs,
    log_fallback,
    start_span,
)
from shared.turn.store import StageInputs

log = logging.getLogger(__name__)

FALLBACK_REPLY = (
    "Sorry, I could not put a full answer together just now. A member of our team "
    "will follow up with you shortly."
)

# The qualification each phase reaches; a turn moves it forward, never back (in the order
# of ``Qualification``).
QUALIFICATION_BY_PHASE: dict[str, Qualification] = {
    Phase.OPENING: Qualification.ENGAGED,
    Phase.DISCOVERY: Qualification.ENGAGED,
    Phase.QUALIFICATION: Qualification.QUALIFYING,
    Phase.TECHNICAL_EVALUATION: Qualification.EVALUATING,
    Phase.CONTENT: Qualification.QUALIFIED,
    Phase.CLOSING: Qualification.QUALIFIED,
    Phase.SUPPORT: Qualification.CUSTOMER,
    Phase.HANDOFF: Qualification.HANDED_OFF,
}
_QUALIFICATION_RANK = {q: i for i, q in enumerate(Qualification)}
_PHASES = frozenset(Phase)


def next_qualification(current: Qualification, phase: str | None) -> Qualification:
    proposed = QUALIFICATION_BY_PHASE.get(phase or "", current)
    return proposed if _QUALIFICATION_RANK[proposed] > _QUALIFICATION_RANK[current] else current


def updated_memory(
    memory: ConversationMemory,
    turn: TurnRecord,
    agent: Agent,
    research: Research | None,
    stated: CustomerFacts | None = None,
    reply: str = "",
) -> ConversationMemory:
    """The memory as the turn's agent leaves it (keys it does not know are kept).
    ``stated``: the facts the message states, as the stage's ``FactExtractor`` read them;
    read with patterns when not given (re-scoring, summaries). ``reply``: the agent's reply,
    whose questions to the customer join ``asked``."""
    topics = list(memory.topics)
    for hit in research.hits[:1] if research else []:
        if hit.title not in topics:
            topics.append(hit.title)
    return memory.model_copy(
        update={
            "turns": memory.turns + 1,
            "last_agent": agent,
            "last_phase": Phase(turn.phase) if turn.phase in _PHASES else None,
            "last_intent": turn.intent,
            "topics": topics[-8:],
            "furthest_phase": furthest_phase(memory, turn.phase),
            "facts": remembered_facts(memory, turn.message, stated),
            "asked": list(dict.fromkeys([*memory.asked, *questions_in(reply)])),
        }
    )


def memory_fields_written(before: ConversationMemory, after: ConversationMemory) -> list[str]:
    """The conversation memory's fields a turn changed, as the trace lists them
    (``memory.facts``, ``memory.furthest_phase``...)."""
    earlier, now = before.to_stored(), after.to_stored()
    return [f"memory.{key}" for key in sorted(now) if earlier.get(key) != now[key]]


# Fact extractions that call a model, beside the streamed replies of this process's agents:
# threads started when first needed, one pool per process (a forked child makes its own).
FACTS_POOL = Resource(
    "fact-extraction threads",
    make=lambda: ThreadPoolExecutor(max_workers=32, thread_name_prefix="facts"),
    close=lambda pool: pool.shutdown(wait=False, cancel_futures=True),
)
# How long past the turn's deadline the agent waits for an extraction before reading the
# facts with patterns (the call itself stops at the deadline).
FACTS_GRACE_S = 1.0


def _log_facts_fallback(turn: TurnRecord, extractor: FactExtractor, reason: str) -> None:
    log.warning(
        "customer facts read with patterns",
        extra={
            "action": "facts_fallback",
            "turn_id": str(turn.id),
            "tenant_id": turn.tenant_id,
            "stage": Stage.AGENT.value,
            "provider": extractor.name,
            "reason": reason,
        },
    )


def message_facts(
    extractor: FactExtractor,
    *,
    turn: TurnRecord,
    memory: ConversationMemory,
    model: str,
    usage: Usage,
    deadline: float,
) -> CustomerFacts:
    """The facts the turn's message states, as ``extractor`` reads them; with patterns when
    it fails, whatever the failure (logged with its reason): never an error."""
    try:
        if extractor.calls_a_model:
            ensure_budget_left(deadline, Stage.AGENT)
        return extractor.extract_facts(
            message=turn.message, memory=memory, model=model, usage=usage, deadline=deadline
        )
    except Exception as exc:  # the memory's facts are never worth failing the turn
        _log_facts_fallback(turn, extractor, str(exc) or type(exc).__name__)
        return facts_in(turn.message)


def start_facts(inputs: StageInputs) -> Callable[[Usage], CustomerFacts]:
    """Starts reading the message's facts; the function returned waits for them and counts
    the extraction's calls and tokens in the stage's usage. An extraction that calls a
    model runs in a thread from now on; a local one runs when its result is asked for."""
    extractor = get_providers().facts
    turn, own = inputs.turn, Usage()

    def extract() -> CustomerFacts:
        return message_facts(
            extractor,
            turn=turn,
            memory=inputs.context.memory,
            model=inputs.settings.models.agent,
            usage=own,
            deadline=inputs.deadline,
        )

    if not extractor.calls_a_model:
        return lambda usage: extract()
    future = runtime().get(FACTS_POOL).submit(extract)

    def wait(usage: Usage) -> CustomerFacts:
        try:
            facts = future.result(timeout=max(0.0, inputs.deadline - time.time()) + FACTS_GRACE_S)
        except TimeoutError:
            _log_facts_fallback(turn, extractor, "still running past the turn's budget")
            facts = facts_in(turn.message)
        usage.absorb(own)  # the calls made so far, answered or not
        return facts

    return wait


def _generate(
    *, turn: TurnRecord, request: ReplyRequest, stream: ReplyStream, usage: Usage, deadline: float
) -> AgentReply | None:
    """The reply, streamed; None when the turn was cancelled meanwhile (the agent stops at
    the batch of tokens after the cancellation, and commits nothing)."""
    tokens: list[str] = []
    try:
        ensure_budget_left(deadline, Stage.AGENT)
        for token in get_providers().chat.stream_reply(
            request=request, usage=usage, deadline=deadline
        ):
            if stream.cancelled:
                return None
            stream.token(token)
            tokens.append(token)
        return AgentReply(text="".join(tokens))
    except ChordlineError as exc:
        log_fallback(Stage.AGENT, turn=turn, exc=exc)
        stream.token(("\n" if tokens else "") + FALLBACK_REPLY)
        return AgentReply(text=FALLBACK_REPLY, fallback=True, note=f"agent fell back: {exc}"[:500])


def run_agent(turn_id: str, *, agent: Agent, retrieve: bool, origin: StageOrigin) -> Completion:
    """Answer the turn. Returns whether this run ended it (committed the one reply), and the
    conversation's next turn, if one was waiting."""
    inputs = load_stage_inputs(turn_id)
    turn = inputs.turn
    if turn.completed_at is not None:
        # A run after the end (a duplicate, or a retry after the end was committed but not
        # announced): readers may still be waiting for the end entry.
        announce_end(turn_id, turn.status)
        return Completion(ended=False, next_turn=None)
    if turn.next_agent != agent.value:
        raise StageConflict(f"turn {turn_id} is routed to {turn.next_agent}, not {agent.value}")
    # sequential topology: this agent does its own retrieval; otherwise it is in the row
    research = run_researcher(turn_id, origin) if retrieve else stored_research(turn)
    span = start_span(turn_id, Stage.AGENT, origin)
    request = ReplyRequest(
        agent=agent,
        context=inputs.context,
        hits=research.hits if research else [],
        kb_information_level=research.kb_information_level if research else KbLevel.MISSING,
        routing_reason=turn.routing_reason or "",
        model=inputs.settings.models.agent,
    )
    usage = Usage()
    facts = start_facts(inputs)  # beside the reply, when it calls a model
    stream = ReplyStream(turn_id, watch_cancel=inputs.settings.in_flight_policy == "interrupt")
    try:
        reply = _generate(
            turn=turn, request=request, stream=stream, usage=usage, deadline=inputs.deadline
        )
        completion = (
            None
            if reply is None  # cancelled meanwhile
            else _commit_reply(
                inputs=inputs,
                agent=agent,
                reply=reply,
                research=research,
                stated=facts(usage),
                usage=usage,
                span=span,
            )
        )
    except BaseException:
        stream.close()  # the tokens so far reach readers; the turn has not ended here
        raise
    if completion is None:
        stream.close()
        log.info(
            "agent stopped: turn cancelled",
            extra={"action": "agent_cancelled", "turn_id": turn_id, "tenant_id": turn.tenant_id},
        )
        return Completion(ended=False, next_turn=None)
    if not completion.ended:  # whoever ended the turn first announced it
        stream.close()
        return completion
    # The reply is committed before its last tokens reach Redis: they go out with the end
    # entry and the release of the tenant's admission slot, in that order, in one round trip.
    released = end_in_redis(
        turn_id,
        TurnStatus.COMPLETED.value,
        tenant=turn.tenant_id,
        policy=inputs.settings.admission,
        stream=stream,
    )
    let_go_safely(turn.tenant_id, released)
    return completion


def _commit_reply(
    *,
    inputs: StageInputs,
    agent: Agent,
    reply: AgentReply,
    research: Research | None,
    stated: CustomerFacts,
    usage: Usage,
    span: SpanRecord,
) -> Completion:
    """One transaction: the reply, the span, the conversation's memory, the next turn."""
    turn = inputs.turn
    values: dict[str, Any] = {
        "agent_response": reply.text,
        "agent_fallback": reply.fallback,
        "agent_note": reply.note,
        "completed_at": time.time(),
        "status": TurnStatus.COMPLETED.value,
    }
    before = inputs.context.memory
    memory = updated_memory(before, turn, agent, research, stated, reply=reply.text)
    values["memory_after"] = memory.to_stored()  # the turn keeps the memory it left
    qualification = next_qualification(inputs.context.qualification_status, turn.phase)
    finished = finish_span(
        span,
        usage=usage,
        fields=sorted(values) + memory_fields_written(before, memory),
        outcome="fallback" if reply.fallback else "ok",
    )
    with direct_connection() as conn:
        return complete_turn(
            conn,
            turn_id=str(turn.id),
            conversation_id=turn.conversation_id,
            values=values,
            span=finished,
            usage=usage.as_dict(),
            memory=values["memory_after"],
            qualification_status=qualification,
            stage_deadline_s=get_settings().turn.stage_deadline_s,
        )
