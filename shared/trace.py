"""A turn's stages on one time axis, and its critical path: the trace the HTTP API serves.

Every stage of every turn stores a span (``turn_spans``): its queue, worker and process, when
it was enqueued, started and finished, its attempt number and the fields it wrote. This
module puts those spans on the turn's own time axis (0 ms is the moment the client accepted
the turn) and finds the turn's critical path; shared/tools/reports/trace.py draws it on a
terminal.

The critical path, and so the stage the user waited on, is read from the timestamps, not
assumed from the topology: starting from the stage that finished last, walk back to the
stage that finished last *before* this one started (its predecessor), until none is left.
Running time on that chain belongs to its stages; every gap between them (publish after
commit, broker queue wait, the chord's hand-off to the merge) is ``queue_wait``. The same walk
fits every topology: in a parallel turn it passes through whichever of the orchestrator or
the researcher finished last, so that header stage is the one the merge, and the user,
waited on; in a sequential turn the researcher runs inside the agent's task, after the
merge, and the orchestrator is the stage waited on before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.db.models import Turn, TurnSpan

STAGE_ORDER = {"orchestrator": 0, "researcher": 1, "merge": 2, "agent": 3}
HEADER_STAGES = ("orchestrator", "researcher")
QUEUE_WAIT = "queue_wait"
# Where a turn's time can go on its critical path, in the order a turn passes through them.
CRITICAL_STAGES = ("orchestrator", "researcher", QUEUE_WAIT, "merge", "agent")
# Spans come from different processes' clocks; a predecessor may end this much after its
# successor started (float rounding, not real overlap).
CLOCK_TOLERANCE_MS = 0.5


@dataclass(frozen=True)
class StageBar:
    stage: str
    queue: str | None
    worker: str | None
    pid: int | None
    attempt: int
    wait_start_ms: float | None
    start_ms: float
    end_ms: float
    fields: list[str]
    outcome: str = "ok"

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    @property
    def queue_wait_ms(self) -> float | None:
        return None if self.wait_start_ms is None else self.start_ms - self.wait_start_ms


def stage_bars(turn: Turn, spans: Iterable[TurnSpan]) -> list[StageBar]:
    origin = turn.accepted_at
    bars = [
        StageBar(
            stage=s.stage,
            queue=s.queue,
            worker=s.worker,
            pid=s.pid,
            attempt=s.attempt,
            wait_start_ms=None if s.enqueued_at is None else (s.enqueued_at - origin) * 1000,
            start_ms=(s.started_at - origin) * 1000,
            end_ms=(s.finished_at - origin) * 1000,
            fields=list(s.fields_written),
            outcome=s.outcome,
        )
        for s in spans
    ]
    return sorted(bars, key=lambda b: (STAGE_ORDER.get(b.stage, 9), b.start_ms))


def overlap_ms(bars: list[StageBar]) -> float:
    """How long the orchestrator and the researcher ran at the same time."""
    orch = [b for b in bars if b.stage == "orchestrator"]
    research = [b for b in bars if b.stage == "researcher"]
    if not orch or not research:
        return 0.0
    return max(
        0.0, min(orch[0].end_ms, research[0].end_ms) - max(orch[0].start_ms, research[0].start_ms)
    )


# --------------------------------------------------------------------------- critical path


@dataclass(frozen=True)
class Segment:
    """A stretch of the critical path: a stage running, or ``queue_wait`` between stages."""

    stage: str
    start_ms: float
    end_ms: float

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class CriticalPath:
    chain: list[StageBar]
    segments: list[Segment]
    waited_on: str | None

    @property
    def total_ms(self) -> float:
        return self.segments[-1].end_ms if self.segments else 0.0

    def ms_by_stage(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for segment in self.segments:
            totals[segment.stage] = totals.get(segment.stage, 0.0) + segment.duration_ms
        return totals


def _predecessor(bars: list[StageBar], bar: StageBar) -> StageBar | None:
    """The stage that finished last before `bar` started: the one `bar` waited for."""
    before = [
        b
        for b in bars
        if b is not bar
        and b.start_ms < bar.start_ms
        and b.end_ms <= bar.start_ms + CLOCK_TOLERANCE_MS
    ]
    return max(before, key=lambda b: b.end_ms, default=None)


def _waited_on(chain: list[StageBar]) -> str | None:
    """The last header stage on the chain before the merge (or on the chain at all)."""
    merge_at = next((i for i, b in enumerate(chain) if b.stage == "merge"), len(chain))
    headers = [b.stage for b in chain[:merge_at] if b.stage in HEADER_STAGES]
    return headers[-1] if headers else None


def critical_path(bars: list[StageBar]) -> CriticalPath:
    """Walk back from the stage that finished last; gaps between stages are queue waits."""
    if not bars:
        return CriticalPath(chain=[], segments=[], waited_on=None)
    chain: list[StageBar] = []
    current: StageBar | None = max(bars, key=lambda b: b.end_ms)
    while current is not None:
        chain.append(current)
        current = _predecessor(bars, current)
    chain.reverse()
    segments: list[Segment] = []
    cursor = min(0.0, chain[0].start_ms)
    for bar in chain:
        if bar.start_ms > cursor:
            segments.append(Segment(QUEUE_WAIT, cursor, bar.start_ms))
        start = max(cursor, bar.start_ms)
        segments.append(Segment(bar.stage, start, max(start, bar.end_ms)))
        cursor = max(start, bar.end_ms)
    return CriticalPath(chain=chain, segments=segments, waited_on=_waited_on(chain))


@dataclass(frozen=True)
class TurnTrace:
    """One turn, as `chordline trace` shows it."""

    turn_id: str
    tenant_id: str
    topology: str
    status: str
    next_agent: str | None
    kb_information_level: str | None
    latency_ms: float | None
    bars: list[StageBar] = field(default_factory=list)

    @property
    def path(self) -> CriticalPath:
        return critical_path(self.bars)

    def as_dict(self) -> dict[str, Any]:
        path = self.path
        return {
            "turn_id": self.turn_id,
            "tenant_id": self.tenant_id,
            "topology": self.topology,
            "status": self.status,
            "next_agent": self.next_agent,
            "kb_information_level": self.kb_information_level,
            "latency_ms": _round(self.latency_ms),
            "waited_on": path.waited_on,
            "overlap_ms": round(overlap_ms(self.bars), 1),
            "stages": [
                {
                    "stage": b.stage,
                    "queue": b.queue,
                    "worker": b.worker,
                    "pid": b.pid,
                    "attempt": b.attempt,
                    "outcome": b.outcome,
                    "enqueued_ms": _round(b.wait_start_ms),
                    "started_ms": round(b.start_ms, 1),
                    "finished_ms": round(b.end_ms, 1),
                    "queue_wait_ms": _round(b.queue_wait_ms),
                    "duration_ms": round(b.duration_ms, 1),
                    "fields_written": b.fields,
                    "critical": any(b is c for c in path.chain),
                }
                for b in self.bars
            ],
            "critical_path": [
                {"stage": s.stage, "ms": round(s.duration_ms, 1)} for s in path.segments
            ],
        }


def trace_of(turn: Turn, spans: Iterable[TurnSpan]) -> TurnTrace:
    return TurnTrace(
        turn_id=str(turn.id),
        tenant_id=turn.tenant_id,
        topology=turn.topology,
        status=turn.status,
        next_agent=turn.next_agent,
        kb_information_level=turn.kb_information_level,
        latency_ms=None
        if turn.completed_at is None
        else (turn.completed_at - turn.accepted_at) * 1000,
        bars=stage_bars(turn, spans),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
