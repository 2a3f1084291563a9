"""The per-tenant topologies: the stages run in the order each one promises."""

from __future__ import annotations

import pytest

from shared.client import enqueue_turn, wait_for_turn
from shared.db.session import session_scope
from shared.db.spans import spans_of
from tests.conftest import new_tenant

pytestmark = pytest.mark.integration


def test_kb_first_runs_the_researcher_before_the_orchestrator(workers: None) -> None:
    tenant = new_tenant({"topology": "kb_first"})
    turn_id = enqueue_turn(tenant, "c1", "Does Halyard have a REST API and webhooks?")
    view = wait_for_turn(turn_id, timeout=90)
    assert view.status == "completed"
    with session_scope() as session:
        spans = {s.stage: s for s in spans_of(session, turn_id)}
    assert spans["orchestrator"].started_at >= spans["researcher"].finished_at
    assert spans["merge"].started_at >= spans["orchestrator"].finished_at
    assert view.next_agent == "technical_consultant"
