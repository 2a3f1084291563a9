"""The `kb` commands as a new user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config import get_settings
from tests.kb.conftest import chordline, write_docs


def test_an_empty_question_is_refused_before_anything_starts() -> None:
    result = chordline("kb", "search", "   ", "--tenant", "acme")
    assert result.returncode == 2
    assert "question: must not be empty" in result.stderr


def test_an_oversized_question_is_refused_with_the_limit() -> None:
    limit = get_settings().kb.max_query_chars
    result = chordline("kb", "search", "x" * (limit + 1), "--tenant", "acme")
    assert result.returncode == 2
    assert f"is {limit + 1} characters; the limit is {limit}" in result.stderr


@pytest.mark.integration
def test_search_prints_hits_scores_and_the_level(tenant: str) -> None:
    result = chordline("kb", "search", "How are webhooks signed?", "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    assert "API and integrations" in result.stdout and "Webhooks" in result.stdout
    assert "kb_information_level: ACCURATE" in result.stdout

    as_json = chordline("kb", "search", "Can I pay with PayPal?", "--tenant", tenant, "--json")
    research = json.loads(as_json.stdout)
    assert research["kb_information_level"] == "MISSING"
    assert research["vector_store"] == "kb_vectors_local_hash_384"
    assert all(0.0 <= hit["score"] <= 1.0 for hit in research["hits"])


@pytest.mark.integration
def test_search_says_what_it_searched_when_it_left_framing_out(tenant: str) -> None:
    question = "Since Monday our webhooks are no longer signed."
    result = chordline("kb", "search", question, "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    assert "searched as 'our webhooks are signed.'" in result.stdout
    plain = chordline("kb", "search", "How are webhooks signed?", "--tenant", tenant, "--json")
    assert json.loads(plain.stdout)["searched_as"] == "How are webhooks signed?"


@pytest.mark.integration
def test_search_names_the_words_the_best_passage_does_not_hold(tenant: str) -> None:
    """Why a question came back below ACCURATE: the words the offline reranker did not find."""
    question = "Does Halyard integrate with Magento?"
    result = chordline("kb", "search", question, "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    assert "kb_information_level: ACCURATE" not in result.stdout
    assert "not in the best passage: magento" in result.stdout
    as_json = chordline("kb", "search", question, "--tenant", tenant, "--json")
    assert json.loads(as_json.stdout)["words_not_found"] == ["magento"]
    covered = chordline("kb", "search", "How are webhooks signed?", "--tenant", tenant, "--json")
    assert json.loads(covered.stdout)["words_not_found"] == []


@pytest.mark.integration
def test_queue_mode_without_an_ingest_worker_is_refused_and_writes_nothing(
    empty_tenant: str, tmp_path: Path
) -> None:
    docs = write_docs(tmp_path, {"a.md": "# A\n\nText."})
    result = chordline("kb", "ingest", str(docs), "--tenant", empty_tenant, "--mode", "queue")
    assert result.returncode == 2
    assert "--mode: queue needs a running ingest worker" in result.stderr
    listed = chordline("kb", "list", "--tenant", empty_tenant)
    assert "0 documents, 0 chunks" in listed.stdout


@pytest.mark.integration
def test_inline_ingest_then_list_and_delete(empty_tenant: str, tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", {"a.md": "# Alpha\n\nAlpha text.", "b.txt": "Beta."})
    result = chordline("kb", "ingest", str(docs), "--tenant", empty_tenant, "--mode", "inline")
    assert result.returncode == 0, result.stderr
    assert "2 documents (2 added" in result.stdout and "(inline)" in result.stdout
    listed = chordline("kb", "list", "--tenant", empty_tenant)
    assert "Alpha" in listed.stdout and "local-hash-384" in listed.stdout
    deleted = chordline("kb", "delete", str(docs / "b.txt"), "--tenant", empty_tenant)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    remaining = chordline("kb", "list", "--tenant", empty_tenant).stdout
    assert "1 document, 1 chunk\n" in remaining and "documents" not in remaining.splitlines()[-1]


@pytest.mark.integration
def test_an_unknown_tenant_is_named(services: None, tmp_path: Path) -> None:
    result = chordline("kb", "ingest", str(tmp_path), "--tenant", "no-such-tenant")
    assert result.returncode == 2
    assert "unknown tenant 'no-such-tenant'" in result.stderr
