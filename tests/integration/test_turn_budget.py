"""A turn whose budget ran out before its stages ran (accepted while Redis was down, sent on
by the outbox later) ends with the fallback reply, on real workers with offline providers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared.client import TurnView, wait_for_turn
from shared.config import get_settings
from shared.db.session import session_scope
from shared.db.spans import spans_of
from shared.dispatch import publish_committed
from shared.redis_conn import get_redis
from shared.tools.stack.procfile import TURN_PROCESSES, running_workers
from shared.tools.stack.services import reset_process_state
from shared.turn.agents import FALLBACK_REPLY
from tests.conftest import ARTIFACTS, accept_unpublished_turn, new_tenant

pytestmark = pytest.mark.integration

REDIS_DB = 12  # this module's workers alone consume its queues
BUDGET = "CHORDLINE_TURN_BUDGET_S"


def _own_redis_db(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_DB}", parts.query, ""))


@pytest.fixture(scope="module")
def offline_workers(services: None) -> Iterator[None]:
    """The turn workers on the offline providers, which never look at a clock."""
    saved = os.environ["REDIS_URL"]
    os.environ["REDIS_URL"] = _own_redis_db(saved)
    reset_process_state()
    get_redis().flushdb()
    # No metrics: their scrape targets would take (and on exit remove) the names of the
    # session's own workers in the data dir's target list.
    env = {
        "REDIS_URL": os.environ["REDIS_URL"],
        "CHORDLINE_PROVIDERS": "offline",
        "CHORDLINE_METRICS_ENABLED": "false",
    }
    try:
        with running_workers(
            TURN_PROCESSES, env_overrides=env, log_dir=ARTIFACTS / "worker-logs" / "budget"
        ):
            yield
    finally:
        os.environ["REDIS_URL"] = saved
        reset_process_state()


def run_turn(tenant: str, *, topology: str, accepted_s_ago: float) -> TurnView:
    """Accept a turn as ``enqueue_turn`` does, ``accepted_s_ago`` seconds ago, and have it
    published now, as the outbox relay publishes a turn accepted while Redis was down."""
    turn_id = accept_unpublished_turn(
        tenant,
        message="Does Halyard have a REST API and webhooks for stock changes?",
        topology=topology,
        accepted_at=time.time() - accepted_s_ago,
        stage_deadline_s=get_settings().turn.stage_deadline_s,
    )
    assert publish_committed([(turn_id, topology)]) == [turn_id]
    return wait_for_turn(turn_id, timeout=60)


def outcomes(turn_id: str) -> dict[str, str | None]:
    with session_scope() as session:
        return {s.stage: s.outcome for s in spans_of(session, turn_id)}


@pytest.mark.parametrize("topology", ["parallel", "sequential"])
def test_a_turn_whose_budget_ran_out_before_its_stages_ends_with_the_fallback_reply(
    offline_workers: None, topology: str
) -> None:
    tenant = new_tenant({"topology": topology})
    # in time: the offline providers answer
    on_time = run_turn(tenant, topology=topology, accepted_s_ago=0)
    assert on_time.status == "completed" and on_time.agent_fallback is False
    assert on_time.agent_response != FALLBACK_REPLY
    # 55 s late, against a 10 s budget: no stage calls its model, the agent falls back
    late = run_turn(tenant, topology=topology, accepted_s_ago=55)
    assert late.status == "completed"
    assert late.agent_fallback is True and late.agent_response == FALLBACK_REPLY
    assert late.agent_note is not None and late.agent_note.startswith("agent fell back: ")
    assert BUDGET in late.agent_note and "before the agent stage started" in late.agent_note
    assert late.kb_information_level == "MISSING"
    assert outcomes(late.id) == {
        "orchestrator": "fallback",
        "researcher": "fallback",
        "merge": "ok",
        "agent": "fallback",
    }
    assert late.usage.get("agent", {}).get("calls", 0) == 0, late.usage
