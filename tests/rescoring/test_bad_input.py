"""Bad input is refused before anything is written or enqueued, naming the field and limit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.errors import InvalidInput
from shared.rescoring.runs import start_run
from shared.rescoring.selection import RunRequest
from tests.conftest import ROOT, new_tenant
from tests.rescoring.conftest import history_tenant, rescoring_queue_length, run_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history(services: None) -> str:
    return history_tenant(12, per_conversation=4)


@pytest.mark.parametrize(
    ("changes", "field", "limit_text"),
    [
        (
            {"set_pairs": ("thresholds.acurate=0.7",)},
            "--set",
            "unknown setting 'thresholds.acurate'",
        ),
        ({"set_pairs": ("colour=blue",)}, "--set", "known settings: topology"),
        ({"set_pairs": ("thresholds.accurate=1.5",)}, "--set", "less than or equal to 1"),
        ({"set_pairs": ("top_k",)}, "--set", "is not key=value"),
        (
            {"since": "2026-03-01", "until": "2026-02-01"},
            "--until",
            "the date range is the wrong way round",
        ),
        ({"since": "2026-03-01T10:00", "until": "2026-03-01T09:00"}, "--until", "wrong way round"),
        ({"since": "last tuesday"}, "--since", "is not a date; use YYYY-MM-DD"),
        ({"since": "2001-01-01", "until": "2001-01-02"}, "selection", "no finished turns match"),
        ({"conversation": "no-such-conversation"}, "--conversation", "has no conversation"),
        ({"conversation": "bad id!"}, "--conversation", "may hold only"),
        ({"stages": "orchestrator,agent"}, "--stages", "agent is not a stage"),
        ({"batch_size": 0}, "--batch-size", "between 1 and 1000"),
    ],
)
def test_bad_input_is_refused_before_anything_is_created(
    history: str, changes: dict[str, object], field: str, limit_text: str
) -> None:
    runs, queued = run_rows(history), rescoring_queue_length()
    with pytest.raises(InvalidInput) as caught:
        start_run(RunRequest(tenant_id=history, **changes))  # type: ignore[arg-type]
    assert caught.value.field == field, str(caught.value)
    assert limit_text in str(caught.value)
    assert (run_rows(history), rescoring_queue_length()) == (runs, queued)


def test_an_unknown_tenant_is_refused(services: None) -> None:
    queued = rescoring_queue_length()
    with pytest.raises(InvalidInput, match="tenant: unknown tenant 'nobody-here'"):
        start_run(RunRequest(tenant_id="nobody-here"))
    assert rescoring_queue_length() == queued


def test_a_tenant_without_history_is_an_empty_selection(services: None) -> None:
    tenant = new_tenant(with_demo_kb=False)
    with pytest.raises(InvalidInput) as caught:
        start_run(RunRequest(tenant_id=tenant))
    assert caught.value.field == "selection" and "nothing to re-score" in str(caught.value)
    assert run_rows(tenant) == 0


def test_the_command_line_names_the_field_and_exits_2(history: str) -> None:
    queued = rescoring_queue_length()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.tools.cli.main",
            "rescore",
            "--tenant",
            history,
            "--since",
            "2026-03-01",
            "--until",
            "2026-02-01",
        ],
        check=False,
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--until" in done.stderr and "wrong way round" in done.stderr
    assert (run_rows(history), rescoring_queue_length()) == (0, queued)
