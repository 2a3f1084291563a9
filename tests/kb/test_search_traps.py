"""The pgvector traps of a tenant-filtered search, each handled on purpose and shown here:
iterative scan, exact search for small tenants, the HNSW index for large ones (PLAIN
storage), and search statements that are never prepared, so never planned generically."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.session import get_engine, session_scope
from shared.db.tenants import ensure_tenant
from shared.kb import search
from shared.kb.documents import LoadedDocument
from shared.kb.ingest import ingest_documents
from shared.kb.search import (
    configure_hnsw,
    hybrid_search,
    nearest_chunks,
    semantic_sql,
    tenant_sizes,
    use_exact_search,
)
from shared.kb.stores import store_for, vector_literal
from shared.providers.local import LocalEmbedder
from shared.tools.synthetic.kb import SyntheticTenant, documents, make_tenant, question

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EMBEDDER = LocalEmbedder()
STORE = store_for(EMBEDDER)
HNSW_INDEX = f"ix_{STORE.table}_embedding_hnsw"
CHUNKS = {"large": 2400, "small": 120}


SEEDS = {"large": 1, "small": 2}


def tenant_like(size: str, tenant_id: str) -> SyntheticTenant:
    """The generated tenant of that size: the same draws give the same topics and names."""
    return make_tenant(
        tenant_id=tenant_id, size_class="-", chunks=CHUNKS[size], rng=random.Random(SEEDS[size])
    )


def load(size: str, tenant_id: str) -> None:
    """Generated documents for one tenant, through the real ingestion path."""
    with session_scope() as session:
        ensure_tenant(session, tenant_id=tenant_id)
    stream = documents(tenant_like(size, tenant_id), seed=SEEDS[size])
    stored = 0
    while stored < CHUNKS[size]:
        batch = [
            LoadedDocument(d.source, "markdown", d.text) for d in (next(stream) for _ in range(40))
        ]
        results = ingest_documents(
            batch, tenant_id=tenant_id, embedder=EMBEDDER, settings=get_settings().kb
        )
        stored += sum(getattr(r, "chunks", 0) for r in results)


@pytest.fixture(scope="module")
def skewed(services: None) -> Iterator[dict[str, str]]:
    """One tenant with ~95% of the rows and one with ~5%, analyzed."""
    suffix = random.Random().randrange(10**8)
    tenants = {"large": f"large-{suffix}", "small": f"small-{suffix}"}
    for size, tenant_id in tenants.items():
        load(size, tenant_id)
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ANALYZE {STORE.table}"))
    tenant_sizes.forget()
    yield tenants


def plan(session: Session, sql: str, params: dict[str, object]) -> str:
    rows = search.query_rows(session, f"EXPLAIN {sql}", params)
    return "\n".join(row[0] for row in rows)


def query_vector(size: str, tenant_id: str) -> str:
    """A question on what that tenant documents."""
    asked = question(tenant_like(size, tenant_id), random.Random(5))
    return vector_literal(EMBEDDER.embed([asked])[0])


def test_a_small_tenant_gets_its_full_top_k_from_the_graph_with_iterative_scan(
    skewed: dict[str, str],
) -> None:
    """The graph walk (forced here even for a small tenant) stops after ef_search
    candidates without iterative scan; for a question on what the large tenant documents,
    most of those belong to the large tenant and are filtered out."""
    params = {"t": skewed["small"], "v": query_vector("large", skewed["large"]), "k": 40}
    sql = semantic_sql(STORE, exact=False)
    with session_scope() as session:
        session.execute(text("SET LOCAL enable_sort = off"))  # only the HNSW index can order
        session.execute(text("SET LOCAL hnsw.iterative_scan = off"))
        session.execute(text("SET LOCAL hnsw.ef_search = 40"))
        assert HNSW_INDEX in plan(session, semantic_sql(STORE, exact=False), params)
        without = search.query_rows(session, sql, params)
    with session_scope() as session:
        session.execute(text("SET LOCAL enable_sort = off"))
        configure_hnsw(session, ef_search=40, limit=40)
        with_iterative = search.query_rows(session, sql, params)
    assert len(without) < 20  # the trap is real on this data...
    assert len(with_iterative) == 40  # ...and iterative scan fills the top k


def test_small_tenants_are_searched_exactly_and_large_ones_through_the_index(
    skewed: dict[str, str],
) -> None:
    with session_scope() as session:
        assert use_exact_search(session, store=STORE, tenant_id=skewed["small"], exact_below=500)
        assert not use_exact_search(
            session, store=STORE, tenant_id=skewed["large"], exact_below=500
        )
        small = {"t": skewed["small"], "v": query_vector("small", skewed["small"]), "k": 10}
        large = {"t": skewed["large"], "v": query_vector("large", skewed["large"]), "k": 10}
        assert HNSW_INDEX not in plan(session, semantic_sql(STORE, exact=True), small)
        # PLAIN storage lets the planner cost the index right: it walks the graph for a
        # tenant with most of the rows
        assert HNSW_INDEX in plan(session, semantic_sql(STORE, exact=False), large)


def test_index_search_finds_what_exact_search_finds(skewed: dict[str, str]) -> None:
    recalls = []
    rng = random.Random(11)
    tenant = tenant_like("large", skewed["large"])
    for _ in range(20):
        vector = EMBEDDER.embed([question(tenant, rng)])[0]
        with session_scope() as session:
            approximate = nearest_chunks(
                session,
                tenant_id=skewed["large"],
                vector=vector,
                store=STORE,
                limit=10,
                exact=False,
                ef_search=100,
            )
        with session_scope() as session:
            exact = nearest_chunks(
                session,
                tenant_id=skewed["large"],
                vector=vector,
                store=STORE,
                limit=10,
                exact=True,
                ef_search=100,
            )
        recalls.append(len(set(approximate) & set(exact)) / 10)
    assert sum(recalls) / len(recalls) >= 0.9


def test_a_large_tenants_search_is_never_prepared_and_a_tiny_ones_finds_the_same_when_it_is(
    skewed: dict[str, str],
) -> None:
    """psycopg prepares a statement after five runs on a connection, and a prepared
    statement may switch to a generic plan that cannot see which tenant it serves. A large
    tenant's search runs unprepared, planned for its own parameters every time. A tiny
    tenant's statement (reached only by tiny tenants) may be prepared: it finds what it
    finds unprepared."""
    rng = random.Random(5)

    def search_as(tenant_id: str, asked: str) -> list[int]:
        with session_scope() as session:
            hits = hybrid_search(
                session,
                tenant_id=tenant_id,
                question=asked,
                vector=EMBEDDER.embed([asked])[0],
                store=STORE,
                limit=10,
                exact_below=500,
                ef_search=40,
            )
        return [h.chunk_id for h in hits]

    small_questions = [question(tenant_like("small", skewed["small"]), rng) for _ in range(8)]
    with session_scope() as session:
        for size in ("large", "small"):
            for asked in (question(tenant_like(size, skewed[size]), rng) for _ in range(8)):
                hybrid_search(
                    session,
                    tenant_id=skewed[size],
                    question=asked,
                    vector=EMBEDDER.embed([asked])[0],
                    store=STORE,
                    limit=10,
                    exact_below=500,
                    ef_search=40,
                )
        statements = list(
            session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars()
        )
    searches = [s for s in statements if STORE.table in s]
    assert searches and all("+ 0" in s for s in searches), searches  # exact: tiny only
    for asked in small_questions:  # prepared or not, the same chunks
        params = {
            "t": skewed["small"],
            "v": vector_literal(EMBEDDER.embed([asked])[0]),
            "k": 10,
            "words": search.keyword_words(asked),
            "frequent": [],
            "rrf": search.RRF_K,
        }
        with session_scope() as session:
            plan = search.plan_search(
                session, store=STORE, tenant_id=skewed["small"], exact_below=500
            )
            assert plan.tiny
            unprepared = search.query_rows(session, search.hybrid_sql(STORE, plan=plan), params)
        assert search_as(skewed["small"], asked) == [int(r.id) for r in unprepared]


def test_the_text_half_of_a_large_tenant_leaves_out_terms_in_too_many_rows(
    skewed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranking every row that holds a common term would cost more than the whole vector
    half; like a low IDF, such terms say little. Rare ones (a product's own names) stay."""
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE kb_chunks"))
    strict = search.FrequentLexemes(max_rows=300)
    monkeypatch.setattr(search, "frequent_lexemes", strict)
    with session_scope() as session:
        frequent = set(strict.get(session))
    assert {"recommend", "administr"} <= frequent  # template words in most chunks
    tenant = tenant_like("large", skewed["large"])
    rare_name = tenant.names[3]  # in the documents, but in far fewer than 300 rows
    assert rare_name not in frequent

    def text_ranks(tenant_id: str, asked: str) -> list[int | None]:
        with session_scope() as session:
            hits = hybrid_search(
                session,
                tenant_id=tenant_id,
                question=asked,
                vector=EMBEDDER.embed([asked])[0],
                store=STORE,
                limit=10,
                exact_below=500,
                ef_search=40,
            )
        assert len(hits) == 10  # the vector half always answers
        return [h.text_rank for h in hits]

    common_only = "We recommend that administrators do it."
    assert all(rank is None for rank in text_ranks(skewed["large"], common_only))
    assert any(rank is not None for rank in text_ranks(skewed["large"], f"{rare_name} setup"))
    # a small tenant is cheap to rank in full: it keeps every term
    assert any(rank is not None for rank in text_ranks(skewed["small"], common_only))
