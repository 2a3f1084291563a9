"""The gate's credential rules, the refusal to run Flower unauthenticated, and the spans'
trace ids, on inputs chosen by the test."""

from __future__ import annotations

import base64
import uuid
from typing import cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from typer.testing import CliRunner

from shared.config import reset_settings
from shared.errors import InvalidInput
from shared.telemetry import StageTracer, turn_trace_ids
from shared.tools.cli.main import app
from shared.tools.stack.flower_gate import authorised, parse_credentials


def basic(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


def test_credentials_must_be_user_and_password() -> None:
    assert parse_credentials("ops:s3cret, admin:other") == ["ops:s3cret", "admin:other"]
    for bad in (None, "", "   ", "ops", "ops:", ":pw"):
        with pytest.raises(InvalidInput) as caught:
            parse_credentials(bad)
        assert caught.value.field == "FLOWER_BASIC_AUTH"


def test_only_a_listed_user_and_password_are_let_through() -> None:
    credentials = ["ops:s3cret", "admin:other"]
    assert authorised(basic("ops:s3cret"), credentials)
    assert authorised(basic("admin:other"), credentials)
    assert not authorised(basic("ops:other"), credentials)
    assert not authorised(None, credentials)
    assert not authorised("Bearer abc", credentials)
    assert not authorised("Basic not-base64!", credentials)


def test_the_gate_refuses_to_start_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "")
    reset_settings()
    try:
        result = CliRunner().invoke(app, ["flower-gate"])
    finally:
        reset_settings()
    assert isinstance(result.exception, InvalidInput)
    assert result.exception.field == "FLOWER_BASIC_AUTH"


def test_unknown_procfile_entries_are_refused() -> None:
    result = CliRunner().invoke(app, ["proc", "no-such-process"])
    assert isinstance(result.exception, InvalidInput) and result.exception.field == "name"
    result = CliRunner().invoke(app, ["up", "--only", "orchestrator,no-such-process"])
    assert isinstance(result.exception, InvalidInput) and result.exception.field == "--only"
    assert "no-such-process" in str(result.exception)


def test_every_stage_of_a_turn_joins_the_trace_named_by_the_turn_id() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = StageTracer(tracer=provider.get_tracer("test"), provider=provider)
    turn_id = str(uuid.uuid4())
    for task_id, stage in (("t1", "orchestrator"), ("t2", "researcher"), ("t3", "merge")):
        tracer.start(
            task_id,
            task_name=f"chordline.{stage}",
            stage=stage,
            turn_id=turn_id,
            attributes={"messaging.destination.name": stage, "celery.retries": 0},
        )
    tracer.end("t1", state="SUCCESS")
    tracer.end("t2", state="FAILURE", error=RuntimeError("retrieval failed"))
    tracer.end("t3", state="SUCCESS")
    tracer.start(
        "t4", task_name="chordline.kb.ingest_document", stage="ingest", turn_id=None, attributes={}
    )
    tracer.end("t4", state="SUCCESS")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    trace_id, parent_id = turn_trace_ids(turn_id)
    assert trace_id == uuid.UUID(turn_id).int
    for stage in ("orchestrator", "researcher", "merge"):
        span = spans[f"chordline.{stage}"]
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == parent_id
        assert span.attributes is not None
        assert span.attributes["chordline.turn_id"] == turn_id
        assert span.attributes["chordline.stage"] == stage
    assert spans["chordline.researcher"].status.status_code is StatusCode.ERROR
    assert spans["chordline.orchestrator"].status.status_code is StatusCode.UNSET
    assert spans["chordline.kb.ingest_document"].context.trace_id != trace_id
    provider.shutdown()


def test_the_ui_listener_never_serves_metrics_and_asks_everyone_else_for_credentials() -> None:
    from http.server import BaseHTTPRequestHandler
    from types import SimpleNamespace

    from shared.tools.stack.flower_gate import metrics_rules, ui_rules

    decide = ui_rules(["ops:s3cret"])

    def request(path: str, auth: str | None = None, command: str = "GET") -> BaseHTTPRequestHandler:
        # The rules read only the path, the command and the headers of the request.
        return cast(
            BaseHTTPRequestHandler,
            SimpleNamespace(
                path=path, command=command, headers={"Authorization": auth} if auth else {}
            ),
        )

    def status(decision: tuple[int, str] | None) -> int:
        assert decision is not None
        return decision[0]

    for path in ("/metrics", "/metrics/", "//metrics", "/%6detrics", "/metrics?x=1"):
        assert decide(request(path, basic("ops:s3cret"))) == (
            404,
            "metrics are served on the private metrics port only",
        ), path
    assert status(decide(request("/tasks"))) == 401
    assert decide(request("/tasks", basic("ops:s3cret"))) is None
    assert decide(request("/healthcheck")) is None
    assert metrics_rules(request("/metrics")) is None
    assert status(metrics_rules(request("/tasks"))) == 404
    assert status(metrics_rules(request("/metrics", command="POST"))) == 405
