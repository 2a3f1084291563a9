"""`chordline critical-path`: for the last N turns, which stage was the user waiting on?

Method, per turn (see `shared.trace.critical_path` for the walk itself):

1. Take the turn's stage spans on its own time axis (0 ms = the client accepted the turn).
2. Walk back from the stage that finished last (the agent) to the stage that finished last
   before it started, and so on. In a parallel turn that walk goes agent → merge → whichever
   of the orchestrator and the researcher finished last: that header stage *bounded* the
   turn before the merge, and is the turn's ``waited_on``.
3. Time on the walk is attributed to ``orchestrator`` or ``researcher`` (running, before the
   merge, or in a sequential turn the researcher inside the agent's task), ``queue_wait``
   (every gap between stages: the publish after commit, broker queue wait, the chord's
   hand-off to the merge, the merge's publish of the agent), ``merge`` and ``agent``. The
   parts add up to the turn's latency as the spans measured it.

Aggregates over the turns (completed turns only, newest first, optionally one tenant):

- ``by_stage[s].share``: the share of all critical-path milliseconds spent in ``s``;
- ``by_stage[s].p50_ms`` / ``p95_ms``: percentiles (linear interpolation) of ``s``'s
  milliseconds on the critical path, over the turns in which ``s`` was on it;
- ``waited_on``: how many turns each header stage bounded (their share of turns).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.counts import counted
from shared.db.models import Turn, TurnSpan
from shared.errors import InvalidInput
from shared.schemas import TurnStatus
from shared.tools.stats import percentile
from shared.trace import CRITICAL_STAGES, TurnTrace, trace_of
from shared.validation import check_slug

MAX_TURNS = 10_000


@dataclass(frozen=True)
class StageShare:
    share: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class CriticalPathReport:
    turns: list[TurnTrace]
    by_stage: dict[str, StageShare]
    waited_on: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "turns": [_turn_entry(t) for t in self.turns],
            "by_stage": {
                stage: {"share": s.share, "p50_ms": s.p50_ms, "p95_ms": s.p95_ms}
                for stage, s in self.by_stage.items()
            },
            "waited_on": dict(self.waited_on),
        }


def _turn_entry(trace: TurnTrace) -> dict[str, Any]:
    path = trace.path
    return {
        "turn_id": trace.turn_id,
        "tenant_id": trace.tenant_id,
        "topology": trace.topology,
        "agent": trace.next_agent,
        "total_ms": round(path.total_ms, 1),
        "waited_on": path.waited_on,
        "critical_ms": {stage: round(ms, 1) for stage, ms in path.ms_by_stage().items()},
    }


def check_last(value: int) -> int:
    if value < 1 or value > MAX_TURNS:
        raise InvalidInput("--last", f"must be between 1 and {MAX_TURNS}, got {value}")
    return value


def recent_traces(session: Session, *, last: int, tenant_id: str | None = None) -> list[TurnTrace]:
    """The last `last` completed turns (newest first) with their spans, in two queries."""
    check_last(last)
    query = select(Turn).where(Turn.status == TurnStatus.COMPLETED.value)
    if tenant_id is not None:
        query = query.where(Turn.tenant_id == check_slug("tenant", tenant_id))
    turns = list(session.scalars(query.order_by(Turn.completed_at.desc()).limit(last)))
    spans: dict[uuid.UUID, list[TurnSpan]] = defaultdict(list)
    if turns:
        for span in session.scalars(
            select(TurnSpan)
            .where(TurnSpan.turn_id.in_([t.id for t in turns]))
            .order_by(TurnSpan.started_at)
        ):
            spans[span.turn_id].append(span)
    return [trace_of(turn, spans[turn.id]) for turn in turns if spans[turn.id]]


def _percentile(values: list[float], q: float) -> float:
    return percentile(values, q, digits=1) or 0.0


def summarise(traces: list[TurnTrace]) -> CriticalPathReport:
    per_stage: dict[str, list[float]] = {stage: [] for stage in CRITICAL_STAGES}
    waited: dict[str, int] = {}
    for trace in traces:
        path = trace.path
        for stage, ms in path.ms_by_stage().items():
            per_stage.setdefault(stage, []).append(ms)
        if path.waited_on:
            waited[path.waited_on] = waited.get(path.waited_on, 0) + 1
    grand_total = sum(sum(values) for values in per_stage.values())
    by_stage = {
        stage: StageShare(
            share=round(sum(values) / grand_total, 4) if grand_total else 0.0,
            p50_ms=_percentile(values, 50),
            p95_ms=_percentile(values, 95),
        )
        for stage, values in per_stage.items()
    }
    return CriticalPathReport(turns=traces, by_stage=by_stage, waited_on=waited)


def render_report(report: CriticalPathReport, *, show_turns: int = 20) -> RenderableType:
    count = len(report.turns)
    if not count:
        return Text("no completed turns with stage spans yet")
    turns = Table(title=f"the last {counted(count, 'turn')} (newest first)", title_justify="left")
    for column in ("turn", "tenant", "topology", "agent", "total", "waited on", "critical path"):
        turns.add_column(column, no_wrap=column != "critical path")
    for trace in report.turns[:show_turns]:
        path = trace.path
        turns.add_row(
            trace.turn_id[:8],
            trace.tenant_id,
            trace.topology,
            trace.next_agent or "-",
            f"{path.total_ms:,.0f} ms",
            Text(path.waited_on or "-", style="bold yellow"),
            " → ".join(f"{s.stage} {s.duration_ms:,.0f}" for s in path.segments),
        )
    stages = Table(title="where the critical path's milliseconds went", title_justify="left")
    for column in ("stage", "share of ms", "p50", "p95", "turns waited on it"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for stage, share in report.by_stage.items():
        bounded = report.waited_on.get(stage)
        stages.add_row(
            stage,
            f"{share.share:.1%}",
            f"{share.p50_ms:,.0f} ms",
            f"{share.p95_ms:,.0f} ms",
            "-" if bounded is None else f"{bounded} ({bounded / count:.0%})",
        )
    parts: list[RenderableType] = [turns]
    if count > show_turns:
        parts.append(Text(f"… and {count - show_turns} more (--json lists every turn)"))
    parts.append(stages)
    return Group(*parts)
