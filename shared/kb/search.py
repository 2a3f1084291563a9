"""Tenant-filtered hybrid search on pgvector: HNSW (cosine) and full text, fused by RRF.

The tenant filter sits inside both halves, so no query path can see another tenant's rows.
Choices made on purpose:

- ``hnsw.iterative_scan = relaxed_order``: with a filter, HNSW would otherwise stop after
  ``ef_search`` candidates and return too few rows for a small tenant.
- Tenants below ``exact_search_below`` chunks are searched exactly: a sequential scan of a
  few thousand rows is faster than the graph walk, and its recall is 1.
- The vector column is stored PLAIN (see the first migration) so the planner costs the
  HNSW index correctly under a tenant filter.
- Connections run with ``plan_cache_mode = force_custom_plan`` (see shared/db/session.py), so
  a prepared statement never switches to a generic plan that ignores the tenant's size.

Reciprocal rank fusion follows the pattern of pgvector-python's examples/hybrid_search/rrf.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.text import content_terms

RRF_K = 60


@dataclass(frozen=True)
class Candidate:
    chunk_id: int
    document_id: str
    title: str
    heading: str
    text: str
    rrf_score: float
    vector_rank: int | None
    text_rank: int | None


def tenant_chunk_count(session: Session, tenant_id: str) -> int:
    return int(
        session.execute(
            text("SELECT count(*) FROM kb_chunks WHERE tenant_id = :t"), {"t": tenant_id}
        ).scalar_one()
    )


def keyword_query(question: str) -> str:
    """An OR of the question's content words, safe to pass to to_tsquery."""
    terms = dict.fromkeys(re.sub(r"[^a-z0-9]", "", t) for t in content_terms(question))
    return " | ".join(f"{t}:*" for t in terms if t)[:2000]


def _vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(f"{v:.6f}" for v in vector) + "]"


def hybrid_search(
    session: Session,
    *,
    tenant_id: str,
    question: str,
    vector: list[float],
    limit: int,
    exact_below: int,
    ef_search: int,
) -> list[Candidate]:
    exact = tenant_chunk_count(session, tenant_id) < exact_below
    session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    session.execute(text(f"SET LOCAL hnsw.ef_search = {max(int(ef_search), limit)}"))
    # "+ 0" turns the ORDER BY into an expression the index cannot serve: an exact scan.
    distance = (
        "(c.embedding <=> CAST(:v AS vector)) + 0"
        if exact
        else "c.embedding <=> CAST(:v AS vector)"
    )
    tsquery = keyword_query(question)
    rows = session.execute(
        text(f"""
        WITH semantic AS (
            SELECT c.id, row_number() OVER (ORDER BY c.distance) AS rank FROM (
                SELECT c.id, c.embedding <=> CAST(:v AS vector) AS distance
                FROM kb_chunks c WHERE c.tenant_id = :t
                ORDER BY {distance} LIMIT :k
            ) c
        ),
        keyword AS (
            SELECT c.id, row_number() OVER (ORDER BY ts_rank_cd(c.tsv, q) DESC) AS rank
            FROM kb_chunks c, to_tsquery('english', :q) q
            WHERE c.tenant_id = :t AND :q <> '' AND c.tsv @@ q
            ORDER BY ts_rank_cd(c.tsv, q) DESC LIMIT :k
        ),
        fused AS (
            SELECT coalesce(s.id, k.id) AS id, s.rank AS vector_rank, k.rank AS text_rank,
                   coalesce(1.0 / (:rrf + s.rank), 0) + coalesce(1.0 / (:rrf + k.rank), 0) AS score
            FROM semantic s FULL OUTER JOIN keyword k ON s.id = k.id
        )
        SELECT c.id, c.document_id, d.title, c.heading, c.text, f.score, f.vector_rank, f.text_rank
        FROM fused f JOIN kb_chunks c ON c.id = f.id JOIN kb_documents d ON d.id = c.document_id
        WHERE c.tenant_id = :t
        ORDER BY f.score DESC LIMIT :k
    """),
        {"t": tenant_id, "v": _vector_literal(vector), "k": limit, "q": tsquery, "rrf": RRF_K},
    ).all()
    return [
        Candidate(
            int(r.id),
            str(r.document_id),
            r.title,
            r.heading,
            r.text,
            float(r.score),
            r.vector_rank,
            r.text_rank,
        )
        for r in rows
    ]
