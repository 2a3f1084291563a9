"""`chordline kb calibrate --tenant T` with Cohere's reranker (the fake v2 rerank API on
loopback): every derived question is reranked by Cohere, and the thresholds fitted on its
scores become the tenant's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.db.session import session_scope
from shared.db.tenants import tenant_settings
from shared.kb.ingest import ingest_paths
from shared.providers.local import LocalEmbedder
from tests.conftest import ROOT, new_tenant
from tests.providers.conftest import fake_api_env
from tests.providers.fake_apis import FakeAPI

pytestmark = pytest.mark.integration

OWN_KB = ROOT / "tests" / "data" / "own_kb"


def test_self_calibration_scores_with_cohere(
    services: None, openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    tenant = new_tenant(with_demo_kb=False)
    ingest_paths([OWN_KB], tenant_id=tenant, embedder=LocalEmbedder())
    env = {
        **os.environ,
        **fake_api_env(openai_api, cohere_api),
        "CHORDLINE_EMBEDDING_PROVIDER": "local",
        "CHORDLINE_CHAT_PROVIDER": "local",
        "CHORDLINE_LOG_FORMAT": "console",
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "chordline"), "kb", "calibrate", "-t", tenant, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    derived = sum(report["questions"].values())
    calls = cohere_api.calls("/v2/rerank")
    assert len(calls) >= derived  # one call per derived question (or per part of one)
    assert openai_api.calls("/v1/embeddings") == []  # the local embedder, as configured
    with session_scope() as session:
        thresholds = tenant_settings(session, tenant).thresholds
    assert report["thresholds"] == {"accurate": thresholds.accurate, "partial": thresholds.partial}
    assert not thresholds.pinned
