"""OpenTelemetry spans for every task a worker runs: optional, off unless configured.

``CHORDLINE_OTEL_ENABLED=true`` turns them on in the workers; it needs the ``otel`` extra
(``pip install 'chordline[otel]'``: opentelemetry-api, -sdk and the OTLP/HTTP exporter).
Without it, chordline says so once and runs without spans. The OTLP exporter is configured
by the standard ``OTEL_EXPORTER_OTLP_*`` variables; ``CHORDLINE_OTEL_EXPORTER=console``
prints spans to stdout instead.

Every stage of one turn joins one trace whose id *is* the turn's id (its 128 bits), under
a parent span id derived from it as well, so a tracing backend shows a turn's orchestrator,
researcher, merge and agent as one trace without carrying context through the broker (the
chord's callback is published by Celery, not by chordline). Search the backend for the turn
id without its dashes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.config import TelemetrySettings

log = logging.getLogger(__name__)

TURN_SPAN_ID_MASK = (1 << 64) - 1


def otel_installed() -> bool:
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def turn_trace_ids(turn_id: str) -> tuple[int, int]:
    """(trace id, parent span id) of a turn's trace: both read off the turn's UUID."""
    value = uuid.UUID(turn_id).int
    return value, (value & TURN_SPAN_ID_MASK) or 1


@dataclass
class StageTracer:
    """Starts a span when a task starts and ends it when the task ends, by task id."""

    tracer: Any
    provider: Any
    open_spans: dict[str, Any] = field(default_factory=dict)

    def start(
        self,
        task_id: str,
        *,
        task_name: str,
        stage: str,
        turn_id: str | None,
        attributes: dict[str, Any],
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

        context = None
        if turn_id is not None:
            trace_id, parent_id = turn_trace_ids(turn_id)
            parent = SpanContext(
                trace_id=trace_id,
                span_id=parent_id,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        self.open_spans[task_id] = self.tracer.start_span(
            task_name,
            context=context,
            kind=SpanKind.CONSUMER,
            attributes={
                "chordline.stage": stage,
                **({"chordline.turn_id": turn_id} if turn_id else {}),
                **{k: v for k, v in attributes.items() if v is not None},
            },
        )

    def end(self, task_id: str, *, state: str | None, error: BaseException | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self.open_spans.pop(task_id, None)
        if span is None:
            return
        span.set_attribute("celery.state", state or "UNKNOWN")
        if error is not None:
            span.record_exception(error)
        if state == "FAILURE" or error is not None:
            span.set_status(Status(StatusCode.ERROR, str(error or state)))
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


def _exporter(kind: str) -> Any:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def make_stage_tracer(settings: TelemetrySettings, *, process: str) -> StageTracer | None:
    if not settings.enabled:
        return None
    if not otel_installed():
        log.warning(
            "CHORDLINE_OTEL_ENABLED is set but OpenTelemetry is not installed; install "
            "chordline[otel]. Running without spans.",
            extra={"action": "otel_unavailable"},
        )
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        exporter = _exporter(settings.exporter)
    except ImportError:
        log.warning(
            "the OTLP exporter is not installed; install chordline[otel]. Running without spans.",
            extra={"action": "otel_unavailable"},
        )
        return None
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": settings.service_name, "service.instance.id": process}
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return StageTracer(tracer=provider.get_tracer("chordline.workers"), provider=provider)


_tracers: dict[int, StageTracer | None] = {}
_lock = threading.Lock()


def stage_tracer(settings: TelemetrySettings, *, process: str) -> StageTracer | None:
    """This process's tracer, made on first use (after any fork) and then reused."""
    pid = os.getpid()
    if pid not in _tracers:
        with _lock:
            if pid not in _tracers:
                _tracers[pid] = make_stage_tracer(settings, process=process)
    return _tracers[pid]


def shutdown_tracing() -> None:
    """Flush and stop this process's tracer, if it made one."""
    tracer = _tracers.pop(os.getpid(), None)
    if tracer is not None:
        tracer.shutdown()
