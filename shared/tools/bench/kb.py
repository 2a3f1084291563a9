"""`chordline kb bench`: ingestion and tenant-filtered search on a generated corpus.

What the data is: product documentation generated from templates over a vocabulary with
topical structure (``shared/tools/synthetic/kb.py``), chunked by the real chunker and
embedded by the offline embedder (``local-hash-384``) through the real ingestion path.
Tenants come in three size classes: one large tenant with 45% of the chunks, five medium
tenants with 7% each, fifty small tenants with 0.4% each.

How it runs: in a scratch database created next to the configured one and dropped at the
end. The documents are loaded with the HNSW index dropped (a bulk load), the index is then
built (``build_s``), and a smaller batch is ingested into the indexed table as well
(``ingest_indexed_chunks_per_s``). Per class, generated questions are searched the way the
researcher searches: ``search_ms`` is the whole hybrid query (tenant size check, vector half,
full-text half, fusion, chunk text), ``vector_search_ms`` the vector half alone, and
``recall_at_10`` compares the vector half's top 10 with an exact search of the same rows.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, make_url, text

from shared.config import KbSettings, get_settings
from shared.counts import counted
from shared.db.models import Base
from shared.db.session import session_scope
from shared.db.tenants import ensure_tenant
from shared.kb.chunking import chunk_document
from shared.kb.documents import LoadedDocument
from shared.kb.ingest import WRITE_GROUP_CHUNKS, StoreResult, ingest_documents
from shared.kb.search import hybrid_search, nearest_chunks, tenant_sizes, use_exact_search
from shared.kb.stores import VectorStore, store_for
from shared.providers.local import LocalEmbedder
from shared.tools.stats import percentiles
from shared.tools.synthetic.kb import SyntheticTenant, documents, make_tenant, question

DATA_DESCRIPTION = (
    "generated product documentation: template sentences over 24 topic vocabularies with "
    "Zipf-like word frequencies, one fictional product per tenant documenting 4-8 topics in "
    "Markdown with headings; chunked by the real chunker and embedded by local-hash-384"
)
SIZE_CLASSES: dict[str, tuple[int, float]] = {  # class: (tenants, share of all chunks)
    "large": (1, 0.45),
    "medium": (5, 0.35),
    "small": (50, 0.20),
}
RECALL_AT = 10
INDEXED_INGEST_SHARE = 0.02
Progress = Callable[[str], None]


@dataclass
class ClassResult:
    chunks: int = 0
    ingest_s: float = 0.0
    search_ms: list[float] = field(default_factory=list)
    vector_ms: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    exact_tenants: int = 0


def plan_tenants(total_chunks: int, rng: random.Random) -> list[SyntheticTenant]:
    tenants: list[SyntheticTenant] = []
    for size_class, (count, share) in SIZE_CLASSES.items():
        per_tenant = max(1, round(total_chunks * share / count))
        tenants += [
            make_tenant(
                tenant_id=f"bench-{size_class}-{i:02d}",
                size_class=size_class,
                chunks=per_tenant,
                rng=rng,
            )
            for i in range(count)
        ]
    return tenants


def scratch_url(base_url: str, name: str) -> str:
    """``base_url`` with another database: user, password, host and query (``sslmode``,
    ...) kept. ``str(URL)`` would mask the password, so the URL is rendered in full."""
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A fresh database on the configured server, migrated; this process uses it meanwhile."""
    from shared.db.migrations import migrate
    from shared.tools.stack.services import reset_process_state

    base_url = get_settings().database_url
    assert base_url is not None
    name = f"kb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = scratch_url(base_url, name)
    reset_process_state()
    try:
        migrate()
        yield name
    finally:
        reset_process_state()
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous
        reset_process_state()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _index_name(store: VectorStore) -> str:
    return f"ix_{store.table}_embedding_hnsw"


def hnsw_options(store: VectorStore) -> dict[str, Any]:
    """The HNSW build options of the store's index, as the models (and migrations) set them."""
    table = Base.metadata.tables[store.table]
    index = next(i for i in table.indexes if i.name == _index_name(store))
    return dict(index.dialect_options["postgresql"]["with"])


def _hnsw_index_ddl(store: VectorStore) -> str:
    options = ", ".join(f"{k} = {v}" for k, v in hnsw_options(store).items())
    return (
        f"CREATE INDEX {_index_name(store)} ON {store.table} "
        f"USING hnsw (embedding vector_cosine_ops) WITH ({options})"
    )


def ingest_tenant(
    tenant: SyntheticTenant,
    *,
    chunks: int,
    embedder: LocalEmbedder,
    settings: KbSettings,
    seed: int,
    start_index: int = 0,
) -> tuple[int, float]:
    """Ingest the tenant's generated documents in write groups, as `kb ingest` does, until
    about ``chunks`` chunks are stored: (chunks stored, seconds spent ingesting, not
    generating)."""
    stored, seconds = 0, 0.0
    stream = documents(tenant, seed=seed, start=start_index)
    while stored < chunks:
        group: list[LoadedDocument] = []
        estimate = 0
        while estimate < min(WRITE_GROUP_CHUNKS, chunks - stored):
            doc = next(stream)
            group.append(LoadedDocument(doc.source, "markdown", doc.text))
            estimate += len(chunk_document(doc.text, kind="markdown", size=settings.chunk_chars))
        started = time.perf_counter()
        results = ingest_documents(
            group, tenant_id=tenant.tenant_id, embedder=embedder, settings=settings
        )
        seconds += time.perf_counter() - started
        stored += sum(r.chunks for r in results if isinstance(r, StoreResult))
    return stored, seconds


def load_corpus(
    tenants: list[SyntheticTenant],
    *,
    embedder: LocalEmbedder,
    seed: int,
    results: dict[str, ClassResult],
    progress: Progress,
) -> None:
    settings = get_settings().kb
    with session_scope() as session:
        for tenant in tenants:
            ensure_tenant(session, tenant_id=tenant.tenant_id, name=tenant.product)
    for tenant in tenants:
        stored, seconds = ingest_tenant(
            tenant, chunks=tenant.chunks, embedder=embedder, settings=settings, seed=seed
        )
        result = results[tenant.size_class]
        result.ingest_s += seconds
        result.chunks += stored
        if tenant.size_class != "small" or tenant.tenant_id.endswith("00"):
            progress(f"ingested {tenant.tenant_id}: {counted(stored, 'chunk')}")


def build_index(store: VectorStore) -> float:
    started = time.perf_counter()
    with session_scope() as session:
        session.execute(text(_hnsw_index_ddl(store)))
    build_s = time.perf_counter() - started
    from shared.db.session import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {store.table}"))
        conn.execute(text("VACUUM ANALYZE kb_chunks"))
        conn.execute(text("VACUUM ANALYZE kb_documents"))
    return build_s


def measure_queries(
    tenants: list[SyntheticTenant],
    *,
    store: VectorStore,
    embedder: LocalEmbedder,
    queries: int,
    results: dict[str, ClassResult],
    seed: int,
) -> None:
    kb = get_settings().kb
    rng = random.Random(f"{seed}:queries")
    by_class: dict[str, list[SyntheticTenant]] = {}
    for tenant in tenants:
        by_class.setdefault(tenant.size_class, []).append(tenant)
    for size_class, members in by_class.items():
        result = results[size_class]
        with session_scope() as session:
            result.exact_tenants = sum(
                use_exact_search(
                    session, store=store, tenant_id=t.tenant_id, exact_below=kb.exact_search_below
                )
                for t in members
            )
        for index in range(queries):
            tenant = members[index % len(members)]
            asked = question(tenant, rng)
            vector = embedder.embed([asked])[0]
            search_ms, vector_ms, recall = _one_query(
                tenant.tenant_id, asked, vector, store=store, kb=kb
            )
            result.search_ms.append(search_ms)
            result.vector_ms.append(vector_ms)
            result.recall.append(recall)


def _one_query(
    tenant_id: str, asked: str, vector: list[float], *, store: VectorStore, kb: KbSettings
) -> tuple[float, float, float]:
    """(hybrid ms, vector-half ms, recall@10 of the vector half) of one question."""
    with session_scope() as session:
        started = time.perf_counter()
        hybrid_search(
            session,
            tenant_id=tenant_id,
            question=asked,
            vector=vector,
            store=store,
            limit=RECALL_AT * 4,
            exact_below=kb.exact_search_below,
            ef_search=kb.ef_search,
        )
        search_ms = (time.perf_counter() - started) * 1000
    with session_scope() as session:
        started = time.perf_counter()
        exact = use_exact_search(
            session, store=store, tenant_id=tenant_id, exact_below=kb.exact_search_below
        )
        found = nearest_chunks(
            session,
            tenant_id=tenant_id,
            vector=vector,
            store=store,
            limit=RECALL_AT * 4,
            exact=exact,
            ef_search=kb.ef_search,
        )
        vector_ms = (time.perf_counter() - started) * 1000
    with session_scope() as session:
        truth = nearest_chunks(
            session,
            tenant_id=tenant_id,
            vector=vector,
            store=store,
            limit=RECALL_AT,
            exact=True,
            ef_search=kb.ef_search,
        )
    recall = len(set(found[:RECALL_AT]) & set(truth)) / max(1, len(truth))
    return search_ms, vector_ms, recall


def ingest_into_index(
    tenants: list[SyntheticTenant], *, total_chunks: int, embedder: LocalEmbedder, seed: int
) -> float:
    """Chunks per second ingested into the indexed table (the large tenant grows a little)."""
    large = next(t for t in tenants if t.size_class == "large")
    target = max(50, int(total_chunks * INDEXED_INGEST_SHARE))
    stored, seconds = ingest_tenant(
        large,
        chunks=target,
        embedder=embedder,
        settings=get_settings().kb,
        seed=seed + 1,
        start_index=1_000_000,
    )
    return stored / seconds


def warm_up(tenants: list[SyntheticTenant], *, store: VectorStore, embedder: LocalEmbedder) -> None:
    kb = get_settings().kb
    rng = random.Random("warm-up")
    for tenant in tenants:
        asked = question(tenant, rng)
        _one_query(tenant.tenant_id, asked, embedder.embed([asked])[0], store=store, kb=kb)


def run_kb_bench(
    *, chunks: int, queries: int, seed: int, progress: Progress = lambda _: None
) -> dict[str, Any]:
    embedder = LocalEmbedder()
    store = store_for(embedder)
    rng = random.Random(seed)
    tenants = plan_tenants(chunks, rng)
    results = {size_class: ClassResult() for size_class in SIZE_CLASSES}
    with scratch_database() as database:
        progress(f"scratch database {database}: loading {chunks} chunks, {len(tenants)} tenants")
        with session_scope() as session:
            session.execute(text(f"DROP INDEX {_index_name(store)}"))
        load_corpus(tenants, embedder=embedder, seed=seed, results=results, progress=progress)
        progress("building the HNSW index")
        build_s = build_index(store)
        progress(f"index built in {build_s:.1f} s; ingesting into the indexed table")
        indexed_rate = ingest_into_index(tenants, total_chunks=chunks, embedder=embedder, seed=seed)
        tenant_sizes.forget()
        progress("searching")
        warm_up(tenants, store=store, embedder=embedder)
        measure_queries(
            tenants, store=store, embedder=embedder, queries=queries, results=results, seed=seed
        )
    return bench_report(
        results, chunks=chunks, queries=queries, build_s=build_s, indexed_rate=indexed_rate
    )


def bench_report(
    results: dict[str, ClassResult],
    *,
    chunks: int,
    queries: int,
    build_s: float,
    indexed_rate: float,
) -> dict[str, Any]:
    kb = get_settings().kb
    loaded = sum(r.chunks for r in results.values())
    report: dict[str, Any] = {
        size_class: {
            "tenants": SIZE_CLASSES[size_class][0],
            "chunks": r.chunks,
            "search_ms": percentiles(r.search_ms, empty=0.0),
            "vector_search_ms": percentiles(r.vector_ms, empty=0.0),
            "recall_at_10": round(statistics.fmean(r.recall), 4) if r.recall else 0.0,
            "build_s": round(build_s, 2),
            "ingest_chunks_per_s": round(r.chunks / r.ingest_s, 1) if r.ingest_s else 0.0,
            "exact_search_tenants": r.exact_tenants,
        }
        for size_class, r in results.items()
    }
    report["overall"] = {
        "chunks": loaded,
        "build_s": round(build_s, 2),
        "ingest_chunks_per_s": round(loaded / sum(r.ingest_s for r in results.values()), 1),
        "ingest_indexed_chunks_per_s": round(indexed_rate, 1),
        "queries_per_class": queries,
    }
    report["config"] = {
        "requested_chunks": chunks,
        "embedding_model": "local-hash-384",
        "hnsw": {**hnsw_options(store_for(LocalEmbedder())), "ef_search": kb.ef_search},
        "iterative_scan": "relaxed_order",
        "exact_search_below": kb.exact_search_below,
        "candidates": RECALL_AT * 4,
    }
    report["data"] = DATA_DESCRIPTION
    return report
