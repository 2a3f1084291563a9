"""The kb benchmark's code path on a few hundred chunks (the real run is `make kb-bench`)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from shared.config import get_settings
from shared.tools.bench.kb import run_kb_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def databases() -> set[str]:
    engine = create_engine(get_settings().database_url or "")
    with engine.connect() as conn:
        names = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    engine.dispose()
    return names


def test_bench_reports_every_size_class_and_drops_its_scratch_database(services: None) -> None:
    before = databases()
    report = run_kb_bench(chunks=400, queries=10, seed=3)
    assert databases() == before
    loaded = sum(report[c]["chunks"] for c in ("large", "medium", "small"))
    # every tenant gets whole documents, so each may hold a few chunks more than its share
    assert 400 <= loaded <= 400 + 56 * 20 and report["overall"]["chunks"] == loaded
    for size_class in ("large", "medium", "small"):
        row = report[size_class]
        assert set(row["search_ms"]) == {"p50", "p95", "p99"}
        assert 0 < row["search_ms"]["p50"] <= row["search_ms"]["p99"]
        assert 0.0 <= row["recall_at_10"] <= 1.0
        assert row["build_s"] > 0 and row["ingest_chunks_per_s"] > 0
    assert report["small"]["exact_search_tenants"] == 50  # tiny tenants: exact, recall 1
    assert report["small"]["recall_at_10"] == 1.0
    assert "generated product documentation" in report["data"]
