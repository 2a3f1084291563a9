"""`chordline kb ingest` with OpenAI embeddings from the fake API on loopback, when the API
keeps failing one document: the others are stored, the failing one is named, and an ingest
run again once the API is healthy embeds only what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.session import session_scope
from tests.conftest import ROOT, new_tenant
from tests.kb.conftest import write_docs
from tests.providers.conftest import fake_api_env
from tests.providers.fake_apis import FakeAPI, Reply, server_error

pytestmark = pytest.mark.integration

MARKER = "Zanzibarquux"  # in the failing document's text only
DOCS = {
    "a-returns.md": "# Returns\n\nReturns are accepted within 14 days of delivery.",
    "b-shipping.md": "# Shipping\n\nOrders ship from the Rotterdam warehouse every weekday.",
    "c-broken.md": f"# Pallets\n\nThe {MARKER} pallet scanner reads RFID tags.",
    "d-support.md": "# Support\n\nSupport answers within four business hours.",
}


def kb_ingest(
    docs: Path, tenant: str, openai: FakeAPI, cohere: FakeAPI
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **fake_api_env(openai, cohere),
        "CHORDLINE_EMBEDDING_PROVIDER": "openai",
        "CHORDLINE_LOG_FORMAT": "console",
    }
    command = ["kb", "ingest", str(docs), "--tenant", tenant, "--mode", "inline"]
    return subprocess.run(
        [str(Path(sys.executable).parent / "chordline"), *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stored_sources(tenant: str) -> dict[str, int]:
    """source name: vectors stored for it by text-embedding-3-small."""
    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT d.source, count(v.chunk_id) FROM kb_documents d "
                "JOIN kb_chunks c ON c.document_id = d.id "
                "LEFT JOIN kb_vectors_text_embedding_3_small_1536 v ON v.chunk_id = c.id "
                "WHERE d.tenant_id = :t GROUP BY d.source"
            ),
            {"t": tenant},
        ).all()
    return {Path(source).name: vectors for source, vectors in rows}


def test_a_document_the_api_keeps_failing_is_named_and_the_others_are_kept(
    services: None, openai_api: FakeAPI, cohere_api: FakeAPI, tmp_path: Path
) -> None:
    tenant = new_tenant(with_demo_kb=False)
    docs = write_docs(tmp_path / "docs", DOCS)
    openai_api.fail_requests_containing("embeddings", MARKER, server_error())

    first = kb_ingest(docs, tenant, openai_api, cohere_api)

    assert first.returncode == 1, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    broken = str(docs / "c-broken.md")
    failed_lines = [line for line in first.stderr.splitlines() if line.startswith("failed ")]
    assert failed_lines == [
        f"failed {broken}: openai: server error (HTTP 500): The server had an error "
        "(gave up after 3 attempts)"
    ]
    assert "3 documents (3 added, 0 replaced, 0 unchanged)" in first.stdout
    assert "1 failed" in first.stdout
    assert stored_sources(tenant) == {"a-returns.md": 1, "b-shipping.md": 1, "d-support.md": 1}
    failing_calls = [c for c in openai_api.calls("/embeddings") if MARKER in str(c.body)]
    assert len(failing_calls) == 3  # retried within the document's budget, then given up

    openai_api.reset()  # healthy again
    second = kb_ingest(docs, tenant, openai_api, cohere_api)

    assert second.returncode == 0, second.stdout + second.stderr
    assert "4 documents (1 added, 0 replaced, 3 unchanged)" in second.stdout
    # chunks are embedded as "heading\ntext"; the questions the tenant's calibration derives
    # afterwards (one batch) have no line break
    calls = [
        c for c in openai_api.calls("/embeddings") if any("\n" in text for text in c.body["input"])
    ]
    assert len(calls) == 1 and MARKER in str(calls[0].body)  # only the missing document
    assert stored_sources(tenant) == {name: 1 for name in DOCS}


def test_a_rejected_key_ends_the_ingest_and_keeps_what_was_embedded_before(
    services: None, openai_api: FakeAPI, cohere_api: FakeAPI, tmp_path: Path
) -> None:
    tenant = new_tenant(with_demo_kb=False)
    docs = write_docs(tmp_path / "docs", DOCS)
    rejected_key = Reply(status=401, body={"error": {"message": "Incorrect API key provided"}})
    openai_api.fail_requests_containing("embeddings", MARKER, rejected_key)

    result = kb_ingest(docs, tenant, openai_api, cohere_api)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: openai: the API key was rejected (HTTP 401); set a valid OPENAI_API_KEY"
    ]
    # No point in trying the next document with a key the API refuses; the two before it
    # were embedded and stay stored.
    assert stored_sources(tenant) == {"a-returns.md": 1, "b-shipping.md": 1}
    assert len(openai_api.calls("/embeddings")) == 3
