"""The researcher stage: what this tenant's knowledge base says about the message."""

from __future__ import annotations

import logging
import time

from shared.db.turns import TurnRecord, stage_message
from shared.errors import ChordlineError
from shared.kb.research import failed_research, gate_skips, research_question, skipped_research
from shared.providers.base import Usage
from shared.providers.timing import operation
from shared.schemas import KbLevel, Research, ResearchHit, Stage, TurnStatus
from shared.turn.stage import (
    CANCELLED_NOTE,
    StageOrigin,
    commit_stage_output,
    ensure_budget_left,
    load_stage_inputs,
    log_fallback,
    read_turn,
    start_span,
)

log = logging.getLogger(__name__)


def stored_research(turn: TurnRecord) -> Research | None:
    if turn.researched_at is None:
        return None
    return Research(
        hits=[ResearchHit.model_validate(h) for h in turn.research_results or []],
        kb_information_level=KbLevel(turn.kb_information_level or KbLevel.MISSING.value),
        retrieval_failed=bool(turn.research_note and "failed" in turn.research_note),
        reason=turn.research_note,
    )


def run_researcher(turn_id: str, origin: StageOrigin) -> Research:
    span = start_span(turn_id, Stage.RESEARCHER, origin)
    inputs = load_stage_inputs(turn_id, conversation=False)
    turn, settings, deadline = inputs.turn, inputs.settings, inputs.deadline
    stored = stored_research(turn)
    if stored is not None:
        return stored
    if turn.status == TurnStatus.CANCELLED.value:  # interrupted: nobody reads its research
        return Research(hits=[], kb_information_level=KbLevel.MISSING, reason=CANCELLED_NOTE)
    skip = gate_skips(message=stage_message(turn), tenant_id=turn.tenant_id, settings=settings)
    usage = Usage()
    outcome = "ok"
    if skip:
        result = skipped_research()
        outcome = "skipped"
    else:
        try:
            ensure_budget_left(deadline, Stage.RESEARCHER)
            with operation():  # retrieval is one operation for the latency it is given
                result = research_question(
                    tenant_id=turn.tenant_id,
                    question=stage_message(turn),
                    settings=settings,
                    usage=usage,
                    deadline=deadline,
                )
        except ChordlineError as exc:
            result = failed_research(exc)
            outcome = "fallback"
            log_fallback(Stage.RESEARCHER, turn=turn, exc=exc)
    values = {
        "research_results": [h.model_dump(mode="json") for h in result.hits],
        "kb_information_level": result.kb_information_level.value,
        "research_note": result.reason,
        "researched_at": time.time(),
    }
    if commit_stage_output(
        stage=Stage.RESEARCHER,
        turn_id=turn_id,
        values=values,
        span=span,
        usage=usage,
        outcome=outcome,
    ):
        return result
    stored = stored_research(read_turn(turn_id))
    assert stored is not None
    return stored
