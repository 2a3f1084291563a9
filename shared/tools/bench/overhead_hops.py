"""Where a turn's overhead goes, hop by hop, for chordline's parallel topology and the bare
chord alike, so that `chordline bench --baseline` can show which hop costs what beyond the
peer.

A turn's overhead (its latency minus the ideal critical path of its own simulated stages)
is cut at the same four points in both systems, and the five pieces add up to it:

- ``to the headers``: from the scheduled arrival to the start of the header stage that
  finished last (acceptance, publishing, the broker, the worker picking the task up);
- ``header stages``: that stage's time beyond the longer simulated header stage (reading
  its inputs, its own work);
- ``to the merge``: from the last header stage's result to the merge's start (writing its
  output, the chord's hand-off, the broker, the merge worker);
- ``merge to agent``: from the merge's start to the agent's (the routing decision and its
  write, publishing the agent task, the broker, the agent worker);
- ``agent``: the agent's time beyond its simulated stream, to the end of the turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select

from shared.db.models import Turn, TurnSpan
from shared.db.session import session_scope

HOPS = ("to the headers", "header stages", "to the merge", "merge to agent", "agent")
HEADER_STAGES = ("orchestrator", "researcher")


@dataclass(frozen=True)
class StageTimes:
    """When one stage of a turn ran (epoch seconds) and how long its simulated work was."""

    started_at: float
    finished_at: float
    simulated_ms: float = 0.0


def turn_hops(
    arrived_at: float,
    headers: Iterable[StageTimes],
    merge_started_at: float,
    agent: StageTimes,
) -> dict[str, float]:
    """The five pieces of one parallel turn's overhead, in milliseconds."""
    header_list = list(headers)
    last = max(header_list, key=lambda stage: stage.finished_at)
    longest_ms = max(stage.simulated_ms for stage in header_list)
    return {
        "to the headers": (last.started_at - arrived_at) * 1000,
        "header stages": (last.finished_at - last.started_at) * 1000 - longest_ms,
        "to the merge": (merge_started_at - last.finished_at) * 1000,
        "merge to agent": (agent.started_at - merge_started_at) * 1000,
        "agent": (agent.finished_at - agent.started_at) * 1000 - agent.simulated_ms,
    }


def mean_hops(per_turn: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean milliseconds per hop over the turns (the means add up to the mean overhead)."""
    turns = list(per_turn)
    if not turns:
        return {}
    return {hop: round(sum(t[hop] for t in turns) / len(turns), 2) for hop in HOPS}


def chordline_hops(arrivals: Mapping[str, float]) -> list[dict[str, float]]:
    """Hops of chordline's completed parallel turns, from their spans: ``arrivals`` maps a
    turn id to its scheduled arrival. A stage's span ends when its result is known, before
    its write; the turn ends when its reply is committed."""
    ids = [uuid.UUID(turn_id) for turn_id in arrivals]
    spans: dict[str, dict[str, StageTimes]] = {}
    with session_scope() as session:
        ended = {
            row.id: row.completed_at
            for row in session.execute(
                select(Turn.id, Turn.completed_at).where(
                    Turn.id.in_(ids), Turn.status == "completed", Turn.agent_fallback.is_(False)
                )
            )
        }
        for span in session.execute(
            select(
                TurnSpan.turn_id,
                TurnSpan.stage,
                TurnSpan.started_at,
                TurnSpan.finished_at,
                TurnSpan.simulated_ms,
            ).where(TurnSpan.turn_id.in_(list(ended)), TurnSpan.outcome == "ok")
        ):
            spans.setdefault(str(span.turn_id), {})[span.stage] = StageTimes(
                span.started_at, span.finished_at, span.simulated_ms or 0.0
            )
    hops = []
    for turn_id, completed_at in ended.items():
        stages = spans.get(str(turn_id), {})
        if completed_at is None or not all(s in stages for s in (*HEADER_STAGES, "merge", "agent")):
            continue
        agent = stages["agent"]
        hops.append(
            turn_hops(
                arrivals[str(turn_id)],
                (stages[s] for s in HEADER_STAGES),
                stages["merge"].started_at,
                StageTimes(agent.started_at, completed_at, agent.simulated_ms),
            )
        )
    return hops
