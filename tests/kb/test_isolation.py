"""Tenant isolation: two tenants with near-identical documents; no query path returns a
chunk of the other tenant, through the vector half (exact and graph), the text half, the
fused result and the whole researcher pipeline."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from shared.db.session import get_engine, session_scope
from shared.db.tenants import tenant_settings
from shared.kb import search
from shared.kb.ingest import ingest_paths
from shared.kb.research import research_question
from shared.kb.search import hybrid_search, nearest_chunks, tenant_sizes
from shared.kb.stores import store_for
from shared.providers.base import Usage
from shared.providers.local import LocalEmbedder
from tests.conftest import new_tenant
from tests.kb.conftest import write_docs

pytestmark = pytest.mark.integration

EMBEDDER = LocalEmbedder()
STORE = store_for(EMBEDDER)

DOC = """# Refund policy of {company}

## Refunds

{company} refunds annual plans within 30 days. Refunds go back to the original card.

## Secret

The escalation code word of {company} is {secret}.
"""
TENANTS = {"acme": ("Acme", "bluefinch"), "globex": ("Globex", "redkestrel")}
QUESTIONS = (
    "How long do refunds of annual plans take?",
    "What is the escalation code word?",
    "bluefinch",
    "redkestrel",
    "Globex Acme refund card",
)


@pytest.fixture(scope="module")
def twins(services: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tenant name -> tenant id, each holding the same document but for two words."""
    ids = {}
    for name, (company, secret) in TENANTS.items():
        tenant_id = new_tenant(with_demo_kb=False)
        folder = tmp_path_factory.mktemp(name)
        write_docs(folder, {"policy.md": DOC.format(company=company, secret=secret)})
        ingest_paths([folder], tenant_id=tenant_id, embedder=EMBEDDER)
        ids[name] = tenant_id
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE kb_chunks"))  # statistics for the frequent-term path
    tenant_sizes.forget()
    return ids


def owners(chunk_ids: list[int]) -> set[str]:
    with session_scope() as session:
        return set(
            session.execute(
                text("SELECT DISTINCT tenant_id FROM kb_chunks WHERE id = ANY(:ids)"),
                {"ids": chunk_ids},
            ).scalars()
        )


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "graph"])
def test_the_vector_half_returns_only_the_tenants_chunks(
    twins: dict[str, str], exact: bool
) -> None:
    for tenant_id in twins.values():
        for asked in QUESTIONS:
            with session_scope() as session:
                if not exact:
                    session.execute(text("SET LOCAL enable_sort = off"))  # walk the graph
                found = nearest_chunks(
                    session,
                    tenant_id=tenant_id,
                    vector=EMBEDDER.embed([asked])[0],
                    store=STORE,
                    limit=50,
                    exact=exact,
                    ef_search=10,
                )
            assert found and owners(found) == {tenant_id}


@pytest.mark.parametrize("exact_below", [10_000, 0], ids=["exact", "graph"])
@pytest.mark.parametrize("text_path", ["scan", "index", "index-pruned"])
def test_the_text_half_and_the_fused_result_return_only_the_tenants_chunks(
    twins: dict[str, str], exact_below: int, text_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prune = text_path == "index-pruned"
    if text_path != "scan":
        monkeypatch.setattr(search, "TEXT_SCAN_BELOW", 0)  # through the GIN index
    if prune:
        # every lexeme the statistics know counts as frequent
        monkeypatch.setattr(search, "frequent_lexemes", search.FrequentLexemes(max_rows=0))
    for name, tenant_id in twins.items():
        other_secret = next(s for n, (_, s) in TENANTS.items() if n != name)
        for asked in (*QUESTIONS, other_secret):
            with session_scope() as session:
                hits = hybrid_search(
                    session,
                    tenant_id=tenant_id,
                    question=asked,
                    vector=EMBEDDER.embed([asked])[0],
                    store=STORE,
                    limit=50,
                    exact_below=exact_below,
                    ef_search=10,
                )
            assert hits and owners([h.chunk_id for h in hits]) == {tenant_id}
            assert not any(other_secret in h.text for h in hits)
        own_secret = TENANTS[name][1]
        if prune:
            continue  # every term may have been left out: the vector half answered alone
        with session_scope() as session:
            by_text = hybrid_search(
                session,
                tenant_id=tenant_id,
                question=own_secret,
                vector=EMBEDDER.embed([own_secret])[0],
                store=STORE,
                limit=50,
                exact_below=exact_below,
                ef_search=10,
            )
        assert by_text[0].text_rank == 1 and own_secret in by_text[0].text


def test_the_researcher_sees_only_the_tenants_knowledge(twins: dict[str, str]) -> None:
    for name, tenant_id in twins.items():
        with session_scope() as session:
            settings = tenant_settings(session, tenant_id)
        other_secret = next(s for n, (_, s) in TENANTS.items() if n != name)
        research = research_question(
            tenant_id=tenant_id,
            question=f"What does {other_secret} mean?",
            settings=settings,
            usage=Usage(),
            deadline=time.time() + 30,
        )
        assert research.hits and owners([h.chunk_id for h in research.hits]) == {tenant_id}
        assert all(other_secret not in h.text for h in research.hits)


def test_the_two_tenants_really_are_near_identical(twins: dict[str, str]) -> None:
    """The test above would prove little if the documents differed much."""
    a, b = (DOC.format(company=c, secret=s) for c, s in TENANTS.values())
    vectors = EMBEDDER.embed([a, b])
    similarity = sum(x * y for x, y in zip(*vectors, strict=True))
    assert similarity > 0.7
