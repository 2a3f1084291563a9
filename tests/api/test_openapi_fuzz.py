"""schemathesis against the served OpenAPI schema: generated requests (valid and not), and
sequences that follow the schema's links (create a turn, read it, its trace, its stream, its
conversation). No response may be a 5xx, and every status, media type, header and body must
be one the schema documents. Bounded: a few examples per operation, a fixed seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.conftest import Tenant, WebProcess
from tests.conftest import ARTIFACTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def test_the_served_schema_holds_under_fuzzing(
    web: WebProcess, api_tenant: Tenant, tmp_path: Path
) -> None:
    report = ARTIFACTS / "schemathesis-junit.xml"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{web.base}/openapi.json",
            "--header",
            f"Authorization: Bearer {api_tenant.key}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "8",
            "--seed",
            "2026",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        cwd=tmp_path,  # its own state folder goes there, not into the work tree
    )
    (ARTIFACTS / "schemathesis.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: 7" in result.stdout  # every operation was exercised
