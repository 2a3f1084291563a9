"""`chordline kb eval` on the second evaluation corpus (tests/data/eval_kb, a product
chordline was never fitted on) and the figures it reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from shared.db.session import session_scope
from shared.db.tenants import tenant_settings
from shared.errors import InvalidInput
from shared.kb.calibration import load_questions
from shared.kb.ingest import ingest_paths
from shared.kb.research import research_question
from shared.providers.base import Usage
from shared.providers.local import LocalEmbedder
from shared.schemas import Agent, KbLevel
from shared.tools.reports.kb_eval import Evaluated, evaluation_report
from tests.conftest import new_tenant
from tests.kb.conftest import chordline

DATA = Path(__file__).resolve().parents[1] / "data"
EVAL_KB, EVAL_QUESTIONS = DATA / "eval_kb", DATA / "eval_questions.jsonl"
HOLDOUT_QUESTIONS = DATA / "holdout_questions.jsonl"  # Wrenchwise, tests/data/holdout_kb


@pytest.mark.parametrize(
    "path", [EVAL_QUESTIONS, HOLDOUT_QUESTIONS], ids=["lumenfield", "wrenchwise"]
)
def test_the_evaluation_corpora_are_labelled_with_levels_agents_and_evidence(path: Path) -> None:
    questions = load_questions(path)
    assert len(questions) >= 60
    counts = {level: sum(q.level is level for q in questions) for level in KbLevel}
    assert min(counts.values()) >= 15, counts
    assert all(q.agent is not None and q.evidence for q in questions)
    assert len({q.question for q in questions}) == len(questions)
    assert sum(q.agent is Agent.SUPPORT for q in questions) >= 8  # described problems


def test_an_unknown_agent_label_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "Price?", "level": "ACCURATE", "agent": "discovery"}\n'
        '{"question": "API?", "level": "ACCURATE", "agent": "sales"}\n'
    )
    with pytest.raises(InvalidInput, match=r"line 2 .* \"agent\" must be one of discovery"):
        load_questions(path)


def _evaluated(
    level: KbLevel,
    predicted: KbLevel,
    agent: Agent,
    routed: Agent,
    confidence: float = 0.5,
    proposed: Agent | None = None,
) -> Evaluated:
    return Evaluated("q", level, predicted, 0.5, agent, routed, "x", confidence, proposed or routed)


def test_the_report_counts_what_it_says() -> None:
    a, p, m = KbLevel.ACCURATE, KbLevel.PARTIAL, KbLevel.MISSING
    results = [
        _evaluated(a, a, Agent.SUPPORT, Agent.SUPPORT, 0.9),
        _evaluated(a, p, Agent.SUPPORT, Agent.ADAPTIVE_RESPONSE, 0.8, Agent.SUPPORT),
        _evaluated(a, a, Agent.DISCOVERY, Agent.TECHNICAL_CONSULTANT, 0.35),
        _evaluated(p, p, Agent.DISCOVERY, Agent.DISCOVERY),
        _evaluated(m, m, Agent.ADAPTIVE_RESPONSE, Agent.ADAPTIVE_RESPONSE),
        _evaluated(m, p, Agent.ADAPTIVE_RESPONSE, Agent.TECHNICAL_CONSULTANT),
    ]
    report = evaluation_report(results)
    assert report["confusion"]["ACCURATE"] == {"ACCURATE": 2, "PARTIAL": 1, "MISSING": 0}
    assert report["per_class_accuracy"] == {"ACCURATE": 0.667, "PARTIAL": 1.0, "MISSING": 0.5}
    assert report["balanced_accuracy"] == pytest.approx((0.667 + 1.0 + 0.5) / 3, abs=1e-3)
    assert report["missing_to_knowledge_bound"] == 0.5
    assert report["problems_to_support"] == 0.5
    assert report["routing"]["support"]["adaptive_response"] == 1
    assert report["routing_accuracy"] == 0.5
    # the orchestrator's own call where a person chose a specialist: the support question it
    # proposed right (the merge then chose adaptive_response at MISSING) counts as right
    assert report["proposal_accuracy"] == 0.75
    assert report["mean_confidence_right"] == pytest.approx((0.9 + 0.8 + 0.5) / 3, abs=1e-3)
    assert report["mean_confidence_wrong"] == pytest.approx(0.35, abs=1e-3)


@pytest.mark.integration
def test_kb_eval_prints_what_the_researcher_decides(services: None) -> None:
    tenant_id = new_tenant(with_demo_kb=False)
    ingest_paths([EVAL_KB], tenant_id=tenant_id, embedder=LocalEmbedder())
    result = chordline(
        "kb", "eval", "--questions", str(EVAL_QUESTIONS), "--tenant", tenant_id, "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    questions = load_questions(EVAL_QUESTIONS)
    with session_scope() as session:
        settings = tenant_settings(session, tenant_id)
    expected = {level.value: {p.value: 0 for p in KbLevel} for level in KbLevel}
    for q in questions:
        research = research_question(
            tenant_id=tenant_id,
            question=q.question,
            settings=settings,
            usage=Usage(),
            deadline=time.time() + 30,
        )
        expected[q.level.value][research.kb_information_level.value] += 1
    assert report["confusion"] == expected
    assert sum(sum(row.values()) for row in report["routing"].values()) == len(questions)
    # each wrong answer says which of its words the best passage did not hold
    below = [w for w in report["wrong"] if w["predicted_level"] != "ACCURATE"]
    assert below and all(isinstance(w["words_not_found"], list) for w in below)
    assert any(w["words_not_found"] for w in below)

    printed = chordline("kb", "eval", "--questions", str(EVAL_QUESTIONS), "--tenant", tenant_id)
    assert printed.returncode == 0, printed.stderr
    assert "balanced accuracy" in printed.stdout and "routing accuracy" in printed.stdout
    assert "described problems routed to support" in printed.stdout
    assert "(not found: " in printed.stdout
