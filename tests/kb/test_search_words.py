"""The text half keeps whole words of any script: an accented query term meets the lexeme
Postgres stored for it, and never falls apart into fragments that match other chunks."""

from __future__ import annotations

import unicodedata

import pytest

from shared.db.session import session_scope
from shared.kb import search
from shared.kb.ingest import ingest_paths
from shared.kb.search import Candidate, hybrid_search, keyword_words, query_words
from shared.kb.stores import store_for
from shared.providers.local import LocalEmbedder
from tests.conftest import new_tenant
from tests.kb.conftest import write_docs

EMBEDDER = LocalEmbedder()
STORE = store_for(EMBEDDER)

DOCS: dict[str, str | bytes] = {
    "cafe.md": "# Café Sonne\n\nThe Café Sonne on the Straße des Friedens serves crème brûlée.",
    "jobs.md": "# Applications\n\nSend your résumé to the hiring team.",
    "billing.md": "# Billing\n\nThe sum of the open invoices is due at the end of the month.",
}


def test_query_words_keep_accented_words_whole_and_as_written() -> None:
    assert query_words("Café Straße résumé") == ["Café", "Straße", "résumé"]
    assert query_words("«CAFÉ» naïve—Ærø, 東京; e-mail foo_bar") == [
        "CAFÉ",
        "naïve",
        "Ærø",
        "東京",
        "e",
        "mail",
        "foo",
        "bar",
    ]
    decomposed = unicodedata.normalize("NFD", "résumé")
    assert query_words(f"my {decomposed}!") == ["my", decomposed]  # the marks stay attached


def test_keyword_words_drop_stopwords_and_duplicates_and_spell_both_forms() -> None:
    assert keyword_words("What is the price of the Growth plan?") == "price Growth plan"
    assert keyword_words("Café Straße résumé").split() == [
        "Café",
        unicodedata.normalize("NFD", "Café"),
        "Straße",
        "résumé",
        unicodedata.normalize("NFD", "résumé"),
    ]
    assert keyword_words("café CAFÉ Café").split()[0] == "café"  # one word, first spelling
    assert "sum" not in keyword_words("résumé").split()
    assert "stra" not in keyword_words("Straße").split()


@pytest.fixture(scope="module")
def accented_tenant(services: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    tenant_id = new_tenant(with_demo_kb=False)
    folder = write_docs(tmp_path_factory.mktemp("accents"), DOCS)
    report = ingest_paths([folder], tenant_id=tenant_id, embedder=EMBEDDER)
    assert report.added == len(DOCS)
    return tenant_id


def text_hits(tenant_id: str, question: str) -> list[Candidate]:
    """The hits the text half ranked, best first."""
    with session_scope() as session:
        hits = hybrid_search(
            session,
            tenant_id=tenant_id,
            question=question,
            vector=EMBEDDER.embed([question])[0],
            store=STORE,
            limit=10,
            exact_below=10_000,
            ef_search=40,
        )
    return sorted((h for h in hits if h.text_rank is not None), key=lambda h: h.text_rank or 0)


@pytest.mark.integration
@pytest.mark.parametrize("text_path", ["scan", "index"])
@pytest.mark.parametrize(
    ("question", "title"),
    [
        ("Café", "Café Sonne"),
        ("CAFÉ", "Café Sonne"),
        ("Straße", "Café Sonne"),
        ("crème brûlée", "Café Sonne"),
        (unicodedata.normalize("NFD", "crème brûlée"), "Café Sonne"),
        ("résumé", "Applications"),
        ("RÉSUMÉ", "Applications"),
    ],
)
def test_an_accented_query_term_matches_the_chunk_that_holds_it_and_no_other(
    accented_tenant: str,
    question: str,
    title: str,
    text_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if text_path == "index":
        monkeypatch.setattr(search, "TEXT_SCAN_BELOW", 0)  # through the GIN index
    hits = text_hits(accented_tenant, question)
    assert [h.title for h in hits] == [title]  # "résumé" is not "sum", "Straße" not "stra"
