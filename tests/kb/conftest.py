"""Knowledge-base fixtures: tenants with their own documents, and an ingest worker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, new_tenant

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_tenant(services: None) -> str:
    """A tenant with no documents."""
    return new_tenant(with_demo_kb=False)


def write_docs(folder: Path, docs: Mapping[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in docs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body, encoding="utf-8")
    return folder


def chordline(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The `chordline` command as a user runs it, against this session's servers."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "chordline"), *args],
        cwd=ROOT,
        env={**os.environ, "CHORDLINE_LOG_FORMAT": "console", "CHORDLINE_PROVIDERS": "offline"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def ingest_worker(services: None) -> Iterator[Path]:
    """An `ingest` worker started from the Procfile; yields its log file."""
    from shared.tools.stack.procfile import running_workers

    log_dir = ARTIFACTS / "worker-logs"
    with running_workers(
        ["ingest"], env_overrides={"CHORDLINE_PROVIDERS": "offline"}, log_dir=log_dir
    ):
        yield log_dir / "ingest.log"
