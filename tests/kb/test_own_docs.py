"""A new user's own small knowledge base (tests/data/own_kb), asked as a person would: the
levels follow what the documents say, with the default thresholds and the offline stack."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from shared.db.session import session_scope
from shared.db.tenants import tenant_settings
from shared.kb.focus import retrieval_query
from shared.kb.ingest import ingest_paths, list_documents
from shared.kb.research import research_question
from shared.providers.base import Usage
from shared.providers.local import LocalEmbedder
from shared.providers.registry import get_providers
from shared.schemas import KbLevel, Research
from tests.conftest import new_tenant

OWN_KB = Path(__file__).resolve().parents[1] / "data" / "own_kb"


@pytest.fixture(scope="module")
def own_tenant(services: None) -> str:
    tenant_id = new_tenant(with_demo_kb=False)
    report = ingest_paths([OWN_KB], tenant_id=tenant_id, embedder=LocalEmbedder())
    assert report.added == 3
    return tenant_id


def ask(tenant_id: str, question: str) -> Research:
    with session_scope() as session:
        settings = tenant_settings(session, tenant_id)
    return research_question(
        tenant_id=tenant_id,
        question=question,
        settings=settings,
        usage=Usage(),
        deadline=time.time() + 30,
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    ("question", "level"),
    [
        # stated outright in integrations.md
        ("Does it integrate with Xero?", KbLevel.ACCURATE),
        # the documents name card and bank transfer, never PayPal
        ("Can I pay with PayPal?", KbLevel.MISSING),
        # security.md says "single sign-on"; overview.md defines "single sign-on (SSO)"
        ("Does SSO work with Google Workspace?", KbLevel.ACCURATE),
        # security.md says "encryption", the question "encrypted"
        ("Is my data encrypted at rest?", KbLevel.ACCURATE),
        # both halves answered, in two documents
        (
            "Does it integrate with QuickBooks and how much does the Business plan cost?",
            KbLevel.ACCURATE,
        ),
        # one half answered (Xero), the other not (Sage)
        ("Does it integrate with Xero and with Sage?", KbLevel.PARTIAL),
        ("Do you have a mobile app for Android?", KbLevel.MISSING),
        # a content request about what integrations.md states: its ask, deliverable and
        # audience are not what the documents must cover
        (
            "Can you write a short email to our bookkeeper explaining how the QuickBooks "
            "sync works?",
            KbLevel.ACCURATE,
        ),
        # a problem report's time frame is not its topic
        ("Since Monday our invoices no longer sync to Xero.", KbLevel.ACCURATE),
        # framing taken out leaves what the documents never name
        ("Write a one-page summary of your HIPAA certification for my boss.", KbLevel.MISSING),
    ],
)
def test_levels_on_a_small_knowledge_base_of_ones_own(
    own_tenant: str, question: str, level: KbLevel
) -> None:
    research = ask(own_tenant, question)
    top = max((h.score for h in research.hits), default=0.0)
    assert research.kb_information_level is level, (top, [h.text[:60] for h in research.hits])


@pytest.mark.integration
def test_an_acronym_the_documents_define_is_matched_both_ways(own_tenant: str) -> None:
    # "SSO" meets the chunk that says only "single sign-on" (security.md), and "single
    # sign-on" the one that says only "SSO" (overview.md, Plans); overview.md defines it
    research = ask(own_tenant, "Does SSO work with Microsoft Entra ID?")
    assert research.hits[0].text.startswith("Security > Signing in"), research.hits
    assert research.kb_information_level is KbLevel.ACCURATE
    research = ask(own_tenant, "Does the Business plan include single sign-on?")
    assert any(h.text.startswith("Tallyway overview > Plans") for h in research.hits[:2])
    assert research.kb_information_level is KbLevel.ACCURATE
    # the Plans section states SSO for the Business plan, not for the Starter plan
    research = ask(own_tenant, "Does the Starter plan include single sign-on?")
    assert any(h.text.startswith("Tallyway overview > Plans") for h in research.hits[:2])
    assert research.kb_information_level is KbLevel.PARTIAL


@pytest.mark.integration
def test_the_same_file_by_relative_and_absolute_path_is_one_document(
    services: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = new_tenant(with_demo_kb=False)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "security.md").write_text((OWN_KB / "security.md").read_text())
    monkeypatch.chdir(tmp_path)
    first = ingest_paths([Path("docs/security.md")], tenant_id=tenant_id, embedder=LocalEmbedder())
    second = ingest_paths(
        [Path(os.path.abspath("docs/security.md"))], tenant_id=tenant_id, embedder=LocalEmbedder()
    )
    assert (first.added, second.unchanged, second.added) == (1, 1, 0)
    with session_scope() as session:
        assert len(list_documents(session, tenant_id)) == 1


@pytest.mark.integration
def test_the_same_passage_never_fills_two_result_slots(services: None, tmp_path: Path) -> None:
    tenant_id = new_tenant(with_demo_kb=False)
    for name in ("a", "b"):  # two documents with the same text
        (tmp_path / name).mkdir()
        (tmp_path / name / "security.md").write_text((OWN_KB / "security.md").read_text())
    ingest_paths([tmp_path / "a", tmp_path / "b"], tenant_id=tenant_id, embedder=LocalEmbedder())
    texts = [h.text for h in ask(tenant_id, "Is my data encrypted at rest?").hits]
    assert texts and len(texts) == len(set(texts)), texts


@pytest.mark.integration
def test_search_shows_how_each_part_of_a_two_part_question_scored(own_tenant: str) -> None:
    from tests.kb.conftest import chordline

    question = "Does it integrate with Xero and with Sage?"
    result = chordline("kb", "search", question, "--tenant", own_tenant, "--json")
    assert result.returncode == 0, result.stderr
    research = json.loads(result.stdout)
    [(first, xero), (second, sage)] = research["parts"]
    assert (first, second) == ("Does it integrate with Xero", "with Sage?")
    assert xero > sage and research["kb_information_level"] == "PARTIAL"
    printed = chordline("kb", "search", question, "--tenant", own_tenant)
    assert "part 'with Sage?': top score" in printed.stdout
    single = chordline("kb", "search", "Does it integrate with Xero?", "-t", own_tenant, "--json")
    assert json.loads(single.stdout)["parts"] == []


@pytest.mark.integration
@pytest.mark.parametrize(
    "message",
    [
        "Since Monday our invoices no longer sync to Xero.",
        "Does it integrate with Xero, and how much does the Business plan cost?",
        "Write a short email to my team explaining how the QuickBooks sync works.",
    ],
)
def test_the_bare_chord_draws_retrieval_by_what_the_researcher_reranks_first(
    own_tenant: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the simulated reranker draws a turn's retrieval time by its first query, and the bare
    # chord of `chordline bench --baseline` draws its own by retrieval_query: the same key
    # is the same wait for the same message
    real = get_providers()
    asked: list[str] = []

    class Recording:
        name = real.reranker.name

        def rerank(self, *, query: str, **kwargs: Any) -> list[float]:
            asked.append(query)
            return real.reranker.rerank(query=query, **kwargs)

    recording = dataclasses.replace(real, reranker=Recording())
    monkeypatch.setattr("shared.kb.research.get_providers", lambda: recording)
    ask(own_tenant, message)
    assert asked[0] == retrieval_query(message)
    assert asked[0] != message  # each of these is searched without its framing or second part
