"""Scenarios 10-13: connections reset mid-task, a long Retry-After, Postgres stopped
immediately, and failing model providers."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from shared.client import get_turn
from shared.db.models import Turn
from shared.db.session import session_scope
from shared.redis_conn import get_redis
from tests.faults.load import MESSAGES
from tests.faults.rig import SETTINGS, Rig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VISIBILITY_TIMEOUT_S = float(SETTINGS["CHORDLINE_CELERY_VISIBILITY_TIMEOUT_S"])


def test_10_connections_reset_mid_task_leave_one_row_and_one_reply(rig: Rig) -> None:
    cut = 0
    with rig.chaos() as load:
        for _ in range(6):
            time.sleep(1.0)
            cut += rig.pg_proxy.reset_all() + rig.redis_proxy.reset_all()
        time.sleep(2)
    outcome = rig.verify("10. connections reset mid-task", load)
    outcome.notes["connections_reset"] = cut
    assert cut > 0
    # one row per accepted turn, one agent reply per completed turn: checked by verify()


def _stage_runs(turn_id: str, stage: str) -> int:
    """How often the stage started for this turn with its fault armed (counted by the hook)."""
    return int(get_redis().get(f"chordline:fault:ratelimit:{turn_id}:{stage}") or 0)


def test_11_a_retry_after_longer_than_the_visibility_timeout_runs_nothing_twice(
    rig: Rig,
) -> None:
    long_wait = 3 * VISIBILITY_TIMEOUT_S
    with rig.chaos(spare=("orchestrator",)) as load:
        held_back = load.send(f"{MESSAGES[1]} {rig.fault('ratelimit', 'orchestrator', long_wait)}")
        brief = load.send(f"{MESSAGES[1]} {rig.fault('ratelimit', 'orchestrator', 1)}")
        # Long enough for Redis to have redelivered a message held past the visibility timeout.
        time.sleep(VISIBILITY_TIMEOUT_S + 4)
    rig.verify("11. 429 with Retry-After > visibility timeout", load)
    assert held_back and brief
    view = get_turn(held_back)
    assert view.status == "failed"
    assert f"retry after {long_wait:g} s" in (view.failure_reason or "")
    assert _stage_runs(held_back, "orchestrator") == 1  # no retry, no redelivery
    assert get_turn(brief).status == "completed"
    assert _stage_runs(brief, "orchestrator") == 2  # the 429, then one retry after 1 s


def _turns_in_flight(turn_ids: list[str]) -> int:
    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Turn)
                .where(
                    Turn.id.in_([uuid.UUID(t) for t in turn_ids]),
                    Turn.status.notin_(("completed", "failed")),
                )
            )
            or 0
        )


def test_12_postgres_stopped_immediately_during_merges_then_restarted(rig: Rig) -> None:
    with rig.chaos() as load:
        time.sleep(2)
        merging = [load.send(f"{MESSAGES[0]} {rig.fault('hang', 'merge', 2)}") for _ in range(3)]
        time.sleep(1)  # the merges are running now, before their writes
        rig.postgres.stop_immediately()
        time.sleep(3)
        rig.postgres.start()
        time.sleep(3)
    outcome = rig.verify("12. Postgres stopped immediately, restarted", load)
    assert all(merging)
    assert all(get_turn(t or "").status == "completed" for t in merging)
    outcome.notes["refused_while_down"] = sum(load.refused.values())


def test_13_llm_errors_timeouts_and_cohere_down_end_every_turn_with_a_fallback(
    rig: Rig,
) -> None:
    failing = {
        # the LLM answers 429/5xx on 40 % of calls, and the agent's slow answers time out
        "orchestrator": {
            "CHORDLINE_SIMULATED_ERROR_RATE": "0.4",
            "CHORDLINE_SIMULATED_ERROR_STAGES": "orchestrator",
        },
        "agents": {
            "CHORDLINE_SIMULATED_ERROR_RATE": "0.4",
            "CHORDLINE_SIMULATED_ERROR_STAGES": "agent",
            "CHORDLINE_SIMULATED_AGENT_MS": "uniform:500:15000",
            "CHORDLINE_TURN_BUDGET_S": "1.5",
        },
        # the reranker (Cohere) is down: every call fails
        "researcher": {
            "CHORDLINE_SIMULATED_ERROR_RATE": "1.0",
            "CHORDLINE_SIMULATED_ERROR_STAGES": "retrieval",
        },
    }
    with rig.cluster.environment(failing):
        rig.cluster.wait_ready(("orchestrator", "researcher", "agents"))
        with rig.chaos() as load:
            time.sleep(8)
        outcome = rig.verify("13. LLM 429/500/timeouts, Cohere down", load)
    ids = [uuid.UUID(t) for t in load.accepted]
    with session_scope() as session:
        rows = session.execute(
            select(Turn.orchestration_note, Turn.research_note, Turn.agent_fallback).where(
                Turn.id.in_(ids)
            )
        ).all()
    researched = [r for r in rows if r.research_note is not None]
    assert researched and all("retrieval failed" in r.research_note for r in researched)
    assert any(r.orchestration_note for r in rows), "no orchestrator fell back"
    assert any(r.agent_fallback for r in rows), "no agent fell back"
    outcome.notes["agent_fallbacks"] = sum(1 for r in rows if r.agent_fallback)
