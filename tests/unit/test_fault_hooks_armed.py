"""The fault suite's hooks (workers/fault_hooks.py) leave the production path alone: a worker
that starts without CHORDLINE_FAULT_MARKER never imports them and runs its stages unwrapped;
one started with it (the suite's) runs every stage through them; production refuses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import reset_settings

ROOT = Path(__file__).resolve().parents[2]
MARKER = "fault-0123456789abcdef"

# What a worker imports at start (the app and its turn task modules), then what it got.
PROBE = """
import json, sys
import workers.app
from workers import agents, base, merge, orchestrator, researcher
print(json.dumps({
    "hooks_loaded": "workers.fault_hooks" in sys.modules,
    "runner_wrapped": hasattr(base.run_turn_stage, "__wrapped__"),
    "tasks_use_it": all(
        m.run_turn_stage is base.run_turn_stage for m in (agents, merge, orchestrator, researcher)
    ),
}))
"""


def _worker_imports(**env: str) -> dict[str, bool]:
    clean = {k: v for k, v in os.environ.items() if k != "CHORDLINE_FAULT_MARKER"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    probed: dict[str, bool] = json.loads(result.stdout.strip().splitlines()[-1])
    return probed


def test_a_worker_started_without_the_marker_never_loads_the_fault_hooks() -> None:
    assert _worker_imports() == {
        "hooks_loaded": False,
        "runner_wrapped": False,
        "tasks_use_it": True,
    }


def test_a_worker_started_with_the_marker_runs_every_turn_stage_through_them() -> None:
    assert _worker_imports(CHORDLINE_FAULT_MARKER=MARKER) == {
        "hooks_loaded": True,
        "runner_wrapped": True,
        "tasks_use_it": True,
    }


@pytest.fixture
def settings_reset() -> Iterator[None]:
    reset_settings()
    yield
    reset_settings()


@pytest.mark.usefixtures("settings_reset")
def test_production_and_short_markers_refuse_to_arm(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import fault_hooks

    monkeypatch.setenv("CHORDLINE_ENV", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.invalid:5432/chordline")
    monkeypatch.setenv("REDIS_URL", "redis://redis.invalid:6379/0")
    monkeypatch.setenv(fault_hooks.MARKER_ENV, MARKER)
    with pytest.raises(SystemExit, match="never armed in production"):
        fault_hooks.install_from_env()
    reset_settings()
    monkeypatch.setenv("CHORDLINE_ENV", "development")
    monkeypatch.setenv(fault_hooks.MARKER_ENV, "short")
    with pytest.raises(SystemExit, match="at least 16 characters"):
        fault_hooks.install_from_env()
    assert fault_hooks.faults_in(f"{MARKER}:crash:merge") == []  # nothing armed
