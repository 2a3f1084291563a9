"""Tenant-filtered hybrid search on pgvector: HNSW (cosine) and full text, fused by RRF.

The vector half reads the vector table of the embedding model that embedded the question
(``shared/kb/stores.py``), the text half reads the chunks' full-text vectors; the tenant
filter sits inside both halves and again on the fused rows, so no query path can see another
tenant's rows. Choices made on purpose, each against a trap measured on pgvector:

- The vector columns are stored PLAIN (see the migrations): with out-of-line storage the
  planner overestimates the cost of the HNSW index and never picks it under a tenant filter.
- ``hnsw.iterative_scan = relaxed_order``: with a filter, HNSW would otherwise stop after
  ``ef_search`` candidates and return too few rows for a tenant that holds a small share of
  the table. Relaxed order is re-sorted by distance in the query.
- Tenants with fewer than ``exact_search_below`` vectors are searched exactly, with an
  ORDER BY the index cannot serve: up to about 20,000 rows, a scan through the tenant index
  reads fewer buffers than a filtered graph walk (measured on 100k rows), and its recall is
  1. The size is a bounded count, remembered per process for a short while.
- The full-text half goes through the GIN index and leaves out lexemes so common that
  ranking their matches would cost more than the whole vector half (over
  ``KEYWORD_TERM_MAX_ROWS`` rows by the planner's statistics): like a low IDF, they tell
  little, and a question made only of them is left to the vector half. A tiny tenant
  (below ``TEXT_SCAN_BELOW`` chunks) is cheaper to scan than any posting list: its rows
  are filtered directly, with every term kept.
- Search statements are never prepared (``query_rows``), except a tiny tenant's: psycopg
  prepares a statement after five executions, and a prepared statement may switch to a
  generic plan that cannot see which tenant, and so which plan, it serves. A tiny tenant's
  query reads only its own rows in both halves, so no plan for it differs by tenant; it is
  the most common search, and planning it costs more than running it. The turn's own
  statements, whose plans do not depend on their parameters, are prepared too.

Reciprocal rank fusion follows the pattern of pgvector-python's examples/hybrid_search/rrf.py.
"""

from __future__ import annotations

import itertools
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.kb.stores import QueryVector, VectorStore, send_query_vectors
from shared.text import STOPWORDS

RRF_K = 60
TENANT_SIZE_TTL_S = 30.0
MAX_QUERY_TERMS = 32
KEYWORD_TERM_MAX_ROWS = 2000
TEXT_SCAN_BELOW = 2000
FREQUENT_LEXEMES_TTL_S = 600.0


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
    aliases: str = ""  # the other spelling of acronyms it uses (shared/kb/acronyms.py)

    @property
    def passage(self) -> str:
        """What the reranker reads: the heading path, the text and the aliases."""
        tail = f"\n({self.aliases})" if self.aliases else ""
        return f"{self.heading}\n{self.text}{tail}"


class TenantSizes:
    """How many vectors a tenant has in a store, counted up to a cap and kept briefly.

    Only the choice between exact and HNSW search depends on it, and both return the same
    rows, so a count a few seconds old costs at most a little speed, never a wrong answer.
    """

    def __init__(self, ttl_s: float = TENANT_SIZE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._known: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def rows(self, db: Database, *, store: VectorStore, tenant_id: str, cap: int) -> int:
        key = (store.table, tenant_id, cap)
        now = time.monotonic()
        with self._lock:
            known = self._known.get(key)
        if known and known[1] > now:
            return known[0]
        count = tenant_vector_rows(db, store=store, tenant_id=tenant_id, cap=cap)
        with self._lock:
            self._known[key] = (count, now + self.ttl_s)
        return count

    def forget(self) -> None:
        with self._lock:
            self._known.clear()


tenant_sizes = TenantSizes()


class FrequentLexemes:
    """Lexemes of the chunks' full text that match more than ``max_rows`` rows, by the
    planner's statistics (pg_stats, refreshed by ANALYZE), kept for a while per process."""

    def __init__(
        self, *, max_rows: int = KEYWORD_TERM_MAX_ROWS, ttl_s: float = FREQUENT_LEXEMES_TTL_S
    ) -> None:
        self.max_rows = max_rows
        self.ttl_s = ttl_s
        self._known: tuple[list[str], float] | None = None
        self._lock = threading.Lock()

    def get(self, db: Database) -> list[str]:
        with self._lock:
            known = self._known
        if known and known[1] > time.monotonic():
            return known[0]
        rows = query_rows(
            db,
            """
            SELECT u.lexeme FROM pg_stats s,
                 unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs)
                     AS u(lexeme, share)
            WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks'
              AND s.attname = 'tsv' AND u.lexeme IS NOT NULL
              AND u.share * (SELECT greatest(reltuples, 0) FROM pg_class
                             WHERE oid = 'kb_chunks'::regclass) > %(max_rows)s
            """,
            {"max_rows": self.max_rows},
        )
        lexemes = [str(row.lexeme) for row in rows]
        with self._lock:
            self._known = (lexemes, time.monotonic() + self.ttl_s)
        return lexemes

    def forget(self) -> None:
        with self._lock:
            self._known = None


frequent_lexemes = FrequentLexemes()


def tenant_vector_rows(db: Database, *, store: VectorStore, tenant_id: str, cap: int) -> int:
    """The tenant's vectors in the store, counted up to ``cap`` (an index-only scan)."""
    [row] = query_rows(
        db,
        f"SELECT count(*) AS n FROM (SELECT 1 FROM {store.table} "
        "WHERE tenant_id = %(t)s LIMIT %(cap)s) AS tenant_rows",
        {"t": tenant_id, "cap": cap},
    )
    return int(row.n)


@dataclass(frozen=True)
class SearchPlan:
    """How to search one tenant, by its size: the vector half exactly or through the
    index; the text half by scanning the tenant's rows or through the GIN index."""

    exact: bool
    scan_text: bool

    @property
    def tiny(self) -> bool:
        """A tenant below ``TEXT_SCAN_BELOW`` chunks: its statement (exact vector half, text
        half over its own rows) is reached by tiny tenants only, so one plan suits all of
        them, and it may be prepared. Postgres takes a generic plan for a prepared statement
        only where that costs no more than the custom plans of its first five runs."""
        return self.exact and self.scan_text


def plan_search(
    db: Database, *, store: VectorStore, tenant_id: str, exact_below: int
) -> SearchPlan:
    cap = max(exact_below, TEXT_SCAN_BELOW)
    rows = tenant_sizes.rows(db, store=store, tenant_id=tenant_id, cap=cap)
    return SearchPlan(exact=rows < exact_below, scan_text=rows < TEXT_SCAN_BELOW)


def use_exact_search(db: Database, *, store: VectorStore, tenant_id: str, exact_below: int) -> bool:
    return plan_search(db, store=store, tenant_id=tenant_id, exact_below=exact_below).exact


def check_question(question: object, *, max_chars: int) -> str:
    """A search question at the door: text, not empty, not over the limit."""
    if not isinstance(question, str):
        raise InvalidInput("question", f"must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InvalidInput("question", "must not be empty or only whitespace")
    if len(question) > max_chars:
        raise InvalidInput(
            "question",
            f"is {len(question)} characters; the limit is {max_chars} "
            "(CHORDLINE_KB_MAX_QUERY_CHARS)",
        )
    if "\x00" in question:
        raise InvalidInput("question", "must not contain NUL characters")
    return question


def _word_char(char: str) -> bool:
    """A letter or digit of any script, or a combining mark (the accent of a decomposed é)."""
    return char.isalnum() or unicodedata.category(char).startswith("M")


def query_words(question: str) -> list[str]:
    """The question's words as written: runs of letters, digits and marks of any script.

    Unlike ``shared.text.words`` (ASCII only: "Café" would be "caf"), an accented word stays
    whole, and keeps its case: ``to_tsvector`` lower-cases and stems it the same way it did
    the stored text, so "CAFÉ" and "Straße" meet the lexemes "café" and "straße".
    """
    runs = itertools.groupby(question, key=_word_char)
    return ["".join(chars) for is_word, chars in runs if is_word]


def _spellings(word: str) -> str:
    """The word composed (é) and, when that differs, decomposed (e + U+0301): the stored text
    is searched as it was written, and either form may have been written."""
    composed, decomposed = (unicodedata.normalize(form, word) for form in ("NFC", "NFD"))
    return composed if composed == decomposed else f"{composed} {decomposed}"


def keyword_words(question: str) -> str:
    """The question's words, for ``to_tsvector('english', ...)`` to stem into lexemes."""
    terms: dict[str, str] = {}
    for word in query_words(question):
        folded = unicodedata.normalize("NFC", word.lower())
        if len(folded) > 1 and folded not in STOPWORDS:
            terms.setdefault(folded, word)
    return " ".join(_spellings(word) for word in list(terms.values())[:MAX_QUERY_TERMS])


def configure_hnsw(db: Database, *, ef_search: int, limit: int) -> None:
    """Transaction-local HNSW settings: iterative scan, and a candidate list at least k long.
    (In a transaction: on a connection in autocommit mode they would end with the statement.)"""
    query_rows(
        db,
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true) AS scan, "
        "set_config('hnsw.ef_search', %(ef)s, true) AS ef",
        {"ef": str(max(int(ef_search), limit))},
    )


def _distance_order(exact: bool) -> str:
    # "+ 0" turns the ORDER BY into an expression the HNSW index cannot serve: an exact scan.
    return (
        "(v.embedding <=> CAST(%(v)s AS vector)) + 0"
        if exact
        else "v.embedding <=> CAST(%(v)s AS vector)"
    )


def semantic_sql(store: VectorStore, *, exact: bool) -> str:
    """The vector half: the tenant's k nearest chunks in the store, ranked by distance."""
    return f"""
        SELECT n.chunk_id, row_number() OVER (ORDER BY n.distance, n.chunk_id) AS rank
        FROM (
            SELECT v.chunk_id, v.embedding <=> CAST(%(v)s AS vector) AS distance
            FROM {store.table} v WHERE v.tenant_id = %(t)s
            ORDER BY {_distance_order(exact)} LIMIT %(k)s
        ) n
    """


KEYWORD_QUERY = """
        (SELECT to_tsquery('simple', string_agg(u.lexeme, ' | ')) AS q
         FROM unnest(to_tsvector('english', %(words)s)) AS u
         WHERE u.lexeme <> ALL (CAST(%(frequent)s AS text[]))
         HAVING count(*) > 0) AS kq
"""


def keyword_sql(*, scan: bool) -> str:
    """The text half: the tenant's chunks matching any of the question's lexemes, ranked.

    A tiny tenant's rows are scanned and filtered (cheaper than intersecting GIN posting
    lists that span every tenant); larger tenants go through the GIN index.
    """
    chunks = (
        "(SELECT id, tsv FROM kb_chunks WHERE tenant_id = %(t)s OFFSET 0) AS c"
        if scan
        else "kb_chunks AS c"
    )
    return f"""
        SELECT c.id AS chunk_id,
               row_number() OVER (ORDER BY ts_rank_cd(c.tsv, kq.q) DESC, c.id) AS rank
        FROM {chunks}, {KEYWORD_QUERY}
        WHERE {"true" if scan else "c.tenant_id = %(t)s"} AND c.tsv @@ kq.q
        ORDER BY ts_rank_cd(c.tsv, kq.q) DESC, c.id LIMIT %(k)s
    """


def hybrid_sql(store: VectorStore, *, plan: SearchPlan) -> str:
    return f"""
        WITH semantic AS ({semantic_sql(store, exact=plan.exact)}),
        keyword AS ({keyword_sql(scan=plan.scan_text)}),
        fused AS (
            SELECT coalesce(s.chunk_id, k.chunk_id) AS chunk_id,
                   s.rank AS vector_rank, k.rank AS text_rank,
                   coalesce(1.0 / (%(rrf)s + s.rank), 0) + coalesce(1.0 / (%(rrf)s + k.rank), 0)
                       AS score
            FROM semantic s FULL OUTER JOIN keyword k ON s.chunk_id = k.chunk_id
        )
        SELECT c.id, c.document_id, d.title, c.heading, c.text,
               f.score, f.vector_rank, f.text_rank, c.aliases
        FROM fused f
        JOIN kb_chunks c ON c.id = f.chunk_id
        JOIN kb_documents d ON d.id = c.document_id
        WHERE c.tenant_id = %(t)s AND d.tenant_id = %(t)s
        ORDER BY f.score DESC, c.id LIMIT %(k)s
    """


def hybrid_search(
    db: Database,
    *,
    tenant_id: str,
    question: str,
    vector: Sequence[float],
    store: VectorStore,
    limit: int,
    exact_below: int,
    ef_search: int,
) -> list[Candidate]:
    """The tenant's best ``limit`` chunks for the question, by RRF of both halves.

    On a connection in autocommit mode (the researcher's), an exact search is one
    statement; a search through the HNSW index runs in a transaction with its settings.
    """
    plan = plan_search(db, store=store, tenant_id=tenant_id, exact_below=exact_below)
    params = {
        "t": tenant_id,
        "v": QueryVector(vector),
        "k": limit,
        "words": keyword_words(question),
        "frequent": [] if plan.scan_text else frequent_lexemes.get(db),
        "rrf": RRF_K,
    }
    with _transaction_for(db, needed=not plan.exact):
        if not plan.exact:
            configure_hnsw(db, ef_search=ef_search, limit=limit)
        rows = query_rows(db, hybrid_sql(store, plan=plan), params, prepare=plan.tiny)
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
            r.aliases,
        )
        for r in rows
    ]


def nearest_chunks(
    db: Database,
    *,
    tenant_id: str,
    vector: Sequence[float],
    store: VectorStore,
    limit: int,
    exact: bool,
    ef_search: int,
) -> list[int]:
    """The vector half alone, in rank order: what recall is measured on."""
    with _transaction_for(db, needed=not exact):
        if not exact:
            configure_hnsw(db, ef_search=ef_search, limit=limit)
        rows = query_rows(
            db,
            f"SELECT chunk_id FROM ({semantic_sql(store, exact=exact)}) s ORDER BY rank",
            {"t": tenant_id, "v": QueryVector(vector), "k": limit},
        )
    return [int(r.chunk_id) for r in rows]


# --------------------------------------------------------------------------- running

Database = Session | psycopg.Connection[Any]


def query_rows(
    db: Database, sql: str, params: dict[str, Any], *, prepare: bool = False
) -> list[Any]:
    """Run one search statement, in the session's transaction or on a direct connection.

    Unless ``prepare`` is set, never as a prepared statement: psycopg prepares a statement
    after a few runs, and a prepared statement may switch to a generic plan, made once for
    every tenant, where the right plan depends on the tenant's size. Unprepared, every run
    is planned for its own parameters (which costs more CPU than running it, for the
    hybrid query)."""
    conn = cast(
        psycopg.Connection[Any],
        db.connection().connection.driver_connection if isinstance(db, Session) else db,
    )
    if any(isinstance(value, QueryVector) for value in params.values()):
        send_query_vectors(conn)
    cursor = conn.cursor(row_factory=namedtuple_row)
    return cursor.execute(sql, params, prepare=None if prepare else False).fetchall()


@contextmanager
def _transaction_for(db: Database, *, needed: bool) -> Iterator[None]:
    """A transaction around statements that share transaction-local settings, when the
    connection would otherwise commit after each one."""
    if needed and isinstance(db, psycopg.Connection) and db.autocommit:
        with db.transaction():
            yield
    else:
        yield
