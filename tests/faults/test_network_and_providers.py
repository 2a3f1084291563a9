"""Scenarios 10-13: connections reset mid-task, a long Retry-After, Postgres stopped
immediately, and failing model providers (the openai and cohere SDKs against scripted
servers on loopback)."""

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
from tests.faults.servers import free_port, wait_until
from tests.providers.conftest import COHERE_KEY, FAST_RETRIES, OPENAI_KEY
from tests.providers.fake_apis import FakeAPI, Reply, is_facts_request, rate_limited, server_error
from workers.fault_hooks import pid_key

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
    # one row per accepted turn, one agent reply per completed turn: checked by verify();
    # a task delivered again because its connection dropped is not taken for a poison pill
    with session_scope() as session:
        reasons = session.scalars(
            select(Turn.failure_reason).where(
                Turn.id.in_([uuid.UUID(t) for t in load.accepted]), Turn.status == "failed"
            )
        ).all()
    assert not [r for r in reasons if "keeps killing its worker" in (r or "")], reasons


def test_11_a_retry_after_longer_than_the_visibility_timeout_runs_nothing_twice(
    rig: Rig,
) -> None:
    long_wait = 3 * VISIBILITY_TIMEOUT_S
    with rig.chaos(spare=("orchestrator",)) as load:
        held_back = load.send(f"{MESSAGES[1]} {rig.fault('ratelimit', 'orchestrator', long_wait)}")
        brief = load.send(f"{MESSAGES[1]} {rig.fault('ratelimit', 'orchestrator', 1)}")
        # Long enough for Redis to have redelivered a message held past the visibility timeout.
        time.sleep(VISIBILITY_TIMEOUT_S + 4)
    outcome = rig.verify("11. 429 with Retry-After > visibility timeout", load, meant_to_fail=1)
    assert held_back and brief
    outcome.notes["faults_fired"] = sum(
        rig.fired("ratelimit", t, "orchestrator") > 0 for t in (held_back, brief)
    )
    view = get_turn(held_back)
    assert view.status == "failed"
    assert f"retry after {long_wait:g} s" in (view.failure_reason or "")
    # the hook counts each start of the stage with the fault armed; it raised the 429 once
    assert rig.fired("ratelimit", held_back, "orchestrator") == 1  # no retry, no redelivery
    assert get_turn(brief).status == "completed"
    assert rig.fired("ratelimit", brief, "orchestrator") >= 2  # the 429, then a retry after 1 s


def test_11b_work_that_outlives_the_visibility_timeout_changes_nothing_twice(
    rig: Rig,
) -> None:
    """celery #5935: a task still running after the visibility timeout is delivered again.

    The threads pool enforces no time limit, so an agent that hangs past its deadlines is
    run a second time while it still runs (redelivered by Redis after the visibility
    timeout, or re-driven by the sweeper after the stage deadline, whichever comes first);
    its late write must change nothing.
    """
    with rig.chaos(spare=("agents",)) as load:
        slow = load.send(f"{MESSAGES[1]} {rig.fault('hang', 'agent', VISIBILITY_TIMEOUT_S + 5)}")
        time.sleep(VISIBILITY_TIMEOUT_S + 8)
    outcome = rig.verify("11b. work outlives the visibility timeout", load)
    assert slow is not None
    outcome.notes["faults_fired"] = int(rig.fired("hang", slow, "agent") > 0)
    view = get_turn(slow)
    assert view.status == "completed"
    # delivered twice (the hang, then the redelivery that answered), replied once
    assert rig.fired("hang", slow, "agent") >= 2


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
        # the hook has stopped each merge at its start, before its write: stop Postgres now
        wait_until(
            lambda: all(get_redis().get(pid_key(t or "", "merge")) for t in merging),
            timeout_s=30,
            what="the marked merges hang",
        )
        rig.postgres.stop_immediately()
        time.sleep(3)
        rig.postgres.start()
        time.sleep(3)
    outcome = rig.verify("12. Postgres stopped immediately, restarted", load)
    assert all(merging)
    outcome.notes["faults_fired"] = sum(rig.fired("hang", t, "merge") > 0 for t in merging)
    assert all(get_turn(t or "").status == "completed" for t in merging)
    outcome.notes["refused_while_down"] = sum(load.refused.values())


def _failing_model_apis(openai: FakeAPI) -> None:
    """The OpenAI fake answers 429s, 500s, timeouts, resets and stalls among normal answers."""
    for _ in range(80):
        # orchestrator (structured output): a 429 honoured, a 500, a reply too slow for the
        # request timeout; then two normal answers
        openai.script(
            "chat", rate_limited(0.3), server_error(), Reply(delay_s=3.0), Reply(), Reply()
        )
        # agents (streamed): a Retry-After beyond the turn's budget, a 500, a reset, a stream
        # that stalls after two chunks; then two normal answers
        openai.script(
            "stream",
            rate_limited(60),
            server_error(),
            Reply(drop=True),
            Reply(stall_after_chunks=2, stall_s=5.0),
            Reply(),
            Reply(),
        )


def test_13_llm_errors_timeouts_and_cohere_down_end_every_turn_with_a_fallback(
    rig: Rig,
) -> None:
    openai = FakeAPI("openai", api_key=OPENAI_KEY).start()
    try:
        _failing_model_apis(openai)
        env = {
            "CHORDLINE_PROVIDERS": "auto",
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": openai.base_url,
            # Cohere is down: nothing listens at its address
            "COHERE_API_KEY": COHERE_KEY,
            "COHERE_BASE_URL": f"http://127.0.0.1:{free_port()}",
            # the knowledge base was embedded by the local model; the search uses it too
            "CHORDLINE_EMBEDDING_PROVIDER": "local",
            **{name: str(value) for name, value in FAST_RETRIES.items()},
        }
        with rig.cluster.environment({n: env for n in ("orchestrator", "researcher", "agents")}):
            rig.cluster.wait_ready(("orchestrator", "researcher", "agents"))
            with rig.chaos() as load:
                time.sleep(8)
            outcome = rig.verify("13. LLM 429/500/timeouts, Cohere down", load)
        # the orchestrators' and the agents' calls (the agents' fact extractions, answered
        # normally, and falling back to patterns when they fail, are counted apart)
        calls = openai.calls("/chat/completions")
        chat_calls = sum(not is_facts_request(c.body) for c in calls)
        facts_calls = len(calls) - chat_calls
    finally:
        openai.stop()
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
    # bounded retries: at most the policy's attempts per stage call, with room for the
    # deliveries and re-drives that the killer causes
    attempts = int(FAST_RETRIES["CHORDLINE_PROVIDER_MAX_ATTEMPTS"])
    assert chat_calls <= 3 * attempts * len(rows)
    outcome.notes["agent_fallbacks"] = sum(1 for r in rows if r.agent_fallback)
    outcome.notes["model_api_calls"] = chat_calls
    outcome.notes["facts_calls"] = facts_calls
