"""The researcher gate and the stages' fallbacks are decided in one place, which the live
stages and re-scoring both call: a change to either cannot make re-scoring disagree with
what a live turn would get."""

from __future__ import annotations

from shared.errors import ProviderError
from shared.kb.research import GATE_SKIPPED, failed_research, gate_skips, skipped_research
from shared.rescoring import scoring
from shared.schemas import Agent, KbLevel, TenantSettings
from shared.turn import orchestrator, researcher
from shared.turn.orchestrator import failed_orchestration

GATED = TenantSettings.model_validate({"researcher_gate": "gated"})


def test_the_gate_skips_only_for_a_gated_tenant_and_a_turn_that_needs_no_knowledge() -> None:
    handoff = "I want to talk to a human please"
    assert gate_skips(message=handoff, tenant_id="t", settings=GATED)
    assert not gate_skips(message=handoff, tenant_id="t", settings=TenantSettings())
    assert not gate_skips(message="Does it have a REST API?", tenant_id="t", settings=GATED)
    assert skipped_research().reason == GATE_SKIPPED
    assert skipped_research().kb_information_level is KbLevel.MISSING


def test_the_fallbacks_say_why_and_never_guess() -> None:
    research = failed_research(ProviderError("cohere: server error (HTTP 500)"))
    assert research.retrieval_failed and research.kb_information_level is KbLevel.MISSING
    assert research.reason == "retrieval failed: cohere: server error (HTTP 500)"
    route = failed_orchestration(ProviderError("openai: timed out"))
    assert route.proposed_agent is Agent.ADAPTIVE_RESPONSE and route.confidence == 0.0
    assert (
        route.fallback_reason == "orchestrator failed over to the default route: openai: timed out"
    )


def test_live_stages_and_rescoring_use_the_same_decisions() -> None:
    for module in (researcher, scoring):
        assert module.gate_skips is gate_skips
        assert module.failed_research is failed_research
        assert module.skipped_research is skipped_research
    assert vars(scoring)["failed_orchestration"] is orchestrator.failed_orchestration
