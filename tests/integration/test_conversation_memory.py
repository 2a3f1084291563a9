"""A sales conversation through the real workers: what the customer said about themselves
is kept in memory, discovery does not ask for it again, and the phase moves forward."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from shared.client import enqueue_turn, wait_for_turn
from shared.db.models import Conversation
from shared.db.session import session_scope
from shared.db.spans import spans_of
from tests.kb.conftest import chordline

pytestmark = pytest.mark.integration


def test_discovery_never_asks_twice_and_the_phase_moves_forward(workers: None, tenant: str) -> None:
    messages = [
        "Hi! We run three warehouses with 40 people and use spreadsheets today.",
        "Does Halyard have a REST API and webhooks for stock changes?",
        "How much does the Growth plan cost?",
    ]
    ids = [enqueue_turn(tenant, "remembers", m) for m in messages]
    views = [wait_for_turn(i, timeout=90) for i in ids]
    assert [v.status for v in views] == ["completed"] * 3
    first, technical, pricing = views
    assert first.next_agent == "discovery"
    assert technical.next_agent == "technical_consultant"
    assert pricing.next_agent == "discovery"
    for view in (first, pricing):  # told in the first message: never asked
        reply = (view.agent_response or "").lower()
        assert "how many sites" not in reply and "using today" not in reply, reply
    assert pricing.phase == "technical_evaluation"  # a pricing question does not go back
    with session_scope() as session:
        memory = session.scalars(
            select(Conversation.contextual_memory).where(
                Conversation.tenant_id == tenant, Conversation.external_id == "remembers"
            )
        ).one()
    assert memory["facts"] == {"sites": 3, "people": 40, "current_tool": "spreadsheets"}
    assert memory["furthest_phase"] == "technical_evaluation"
    # what discovery asked is remembered, not only read back from the recent replies
    assert memory["asked"] == ["timeline", "budget", "decision_makers"]
    with session_scope() as session:  # the trace lists the memory fields each turn wrote
        written = [
            next(s for s in spans_of(session, v.id) if s.stage == "agent").fields_written
            for v in views
        ]
    assert "memory.facts" in written[0] and "agent_response" in written[0]
    assert "memory.facts" not in written[1]  # nothing new about the customer
    assert "memory.last_agent" in written[1]  # discovery, then technical_consultant

    shown = chordline("conversation", "show", "remembers", "--tenant", tenant, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["memory"]["facts"] == memory["facts"]
    assert [t["agent"] for t in record["turns"]] == [v.next_agent for v in views]
    printed = chordline("conversation", "show", "remembers", "--tenant", tenant)
    assert "using today" in printed.stdout and "spreadsheets" in printed.stdout
    assert "timeline, budget, who decides" in printed.stdout
    unknown = chordline("conversation", "show", "nope", "--tenant", tenant)
    assert unknown.returncode == 2
    assert f"conversation: tenant '{tenant}' has no conversation 'nope'" in unknown.stderr
