"""The `chordline` command with bad options and with user text: a bad setting or load is a
clear error naming the option (exit code 2, nothing written or started), and customer
messages, replies and document text print as typed, brackets and all."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

import shared.client
import shared.tools.bench.recovery
import shared.tools.cli.main
import shared.tools.cli.recovery
import shared.tools.cli.turns
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.kb.ingest import ingest_paths
from shared.providers.local import LocalEmbedder
from shared.tools.cli.main import app
from tests.conftest import new_tenant
from tests.kb.conftest import chordline, write_docs


@contextlib.contextmanager
def no_services(**_: Any) -> Iterator[None]:
    yield


@contextlib.contextmanager
def must_not_start(**_: Any) -> Iterator[None]:
    raise AssertionError("services started although the options were refused")
    yield  # pragma: no cover


def stored_settings(tenant: str) -> dict[str, Any] | None:
    with session_scope() as session:
        raw = session.execute(
            text("SELECT settings FROM tenants WHERE id = :t"), {"t": tenant}
        ).scalar()
    return raw


# --------------------------------------------------------------------------- tenant settings


@pytest.mark.integration
def test_tenant_set_with_a_bad_value_names_the_setting_and_writes_nothing(
    services: None,
) -> None:
    tenant = new_tenant({"top_k": 7}, with_demo_kb=False)
    before = stored_settings(tenant)
    result = chordline("tenant", "set", tenant, "candidates=60", "thresholds.accurate=abc")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "ValidationError" not in result.stderr
    assert "thresholds.accurate: input should be a valid number" in result.stderr
    assert "got 'abc'" in result.stderr
    assert stored_settings(tenant) == before  # candidates=60 was not written either

    ok = chordline("tenant", "set", tenant, "thresholds.accurate=0.8")
    assert ok.returncode == 0, ok.stderr
    assert stored_settings(tenant) == {
        **(before or {}),
        "thresholds": {"accurate": 0.8, "pinned": True},  # set by hand: pinned
    }


@pytest.mark.integration
def test_tenant_create_with_a_bad_value_names_it_and_creates_no_tenant(services: None) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    result = chordline("tenant", "create", tenant, "--set", "top_k=0")
    assert result.returncode == 2, result.stderr
    assert "top_k: input should be greater than or equal to 1; got 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert stored_settings(tenant) is None

    unknown = chordline("tenant", "create", tenant, "--set", "thresholds.acurate=0.7")
    assert unknown.returncode == 2
    assert "unknown setting 'thresholds.acurate'" in unknown.stderr
    assert stored_settings(tenant) is None


def test_an_error_message_with_brackets_prints_as_typed() -> None:
    result = chordline("tenant", "set", "acme", "[/x]")  # refused before anything starts
    assert result.returncode == 2, result.stderr
    assert "settings: '[/x]' is not key=value" in result.stderr
    assert "MarkupError" not in result.stderr


# --------------------------------------------------------------------------- user text


def test_a_turn_prints_the_reply_and_the_routing_reason_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view = SimpleNamespace(
        id="turn-1",
        status="completed",
        phase="discovery",
        proposed_agent="sales",
        kb_information_level="ACCURATE",
        next_agent="sales",
        routing_reason="the customer wrote [urgent] and [bold]",
        latency_ms=812.0,
        agent_response="[urgent] noted: reply by Friday [/x] or call us.",
        failure_reason=None,
    )
    monkeypatch.setattr(shared.tools.cli.turns, "needed_services", no_services)
    monkeypatch.setattr(shared.tools.cli.turns, "turn_workers", no_services)
    monkeypatch.setattr(shared.client, "enqueue_turn", lambda *a, **k: "turn-1")
    monkeypatch.setattr(shared.client, "wait_for_turn", lambda *a, **k: view)
    result = CliRunner().invoke(app, ["turn", "[urgent] help [/x]", "-t", "acme", "-c", "c1"])
    assert result.exception is None, result.exception
    assert "[urgent] noted: reply by Friday [/x] or call us." in result.output
    assert "the customer wrote [urgent] and [bold]" in result.output


@pytest.mark.integration
def test_kb_search_prints_titles_and_passages_as_written(services: None, tmp_path: Path) -> None:
    tenant = new_tenant(with_demo_kb=False)
    docs = write_docs(
        tmp_path,
        {"escalation.md": "# Escalation [urgent]\n\nTag the ticket [urgent], close it with [/x]."},
    )
    ingest_paths([docs], tenant_id=tenant, embedder=LocalEmbedder())
    result = chordline("kb", "search", "ticket escalation", "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    assert "Escalation [urgent]" in result.stdout
    assert "close it with [/x]" in result.stdout


# --------------------------------------------------------------------------- load options


@pytest.mark.parametrize(
    "args",
    [
        ["--rate", "0"],
        ["--rate", "-5"],
        ["--rate", "nan"],
        ["--rate", "inf"],
        ["--duration", "0"],
        ["--duration", "-1"],
    ],
)
def test_bench_refuses_a_rate_or_duration_that_is_not_above_zero(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared.tools.cli.main, "needed_services", must_not_start)
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    # one wording for every value refused, negative numbers included
    assert f"Invalid value for '{args[0]}': is {float(args[1]):g}; it must be above 0" in (
        " ".join(result.output.replace("│", " ").split())
    )


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("rate", "duration", "field"),
    [
        (0.0, 5.0, "--rate"),
        (-2.0, 5.0, "--rate"),
        (5000.0, 5.0, "--rate"),
        (5.0, 0.0, "--duration"),
    ],
)
def test_the_arrival_schedule_refuses_a_load_that_would_never_end(
    rate: float, duration: float, field: str
) -> None:
    from shared.tools.bench.turns import poisson_offsets

    with pytest.raises(InvalidInput, match=rf"^{field}: is "):
        poisson_offsets(rate, duration, seed=7)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--rounds", "0"], "--rounds"),
        (["--rate", "0"], "--rate"),
        (["--rate", "-3"], "--rate"),
        (["--warmup", "-1"], "--warmup"),
    ],
)
def test_bench_recovery_refuses_options_that_measure_nothing_before_starting(
    args: list[str], field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def started(*_: Any, **__: Any) -> None:
        raise AssertionError("the run started although the options were refused")

    monkeypatch.setattr(shared.tools.cli.recovery, "needed_services", no_services)
    monkeypatch.setattr(shared.tools.bench.recovery, "_prepare_tenant", started)
    result = CliRunner().invoke(app, ["bench-recovery", *args])
    assert isinstance(result.exception, InvalidInput), result.exception
    assert result.exception.field == field
