"""A turn's stages on one time axis: the waterfall the demo prints and `chordline trace` draws."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db.models import Turn, TurnSpan

STAGE_ORDER = {"orchestrator": 0, "researcher": 1, "merge": 2, "agent": 3}


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

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms

    @property
    def queue_wait_ms(self) -> float | None:
        return None if self.wait_start_ms is None else self.start_ms - self.wait_start_ms


def stage_bars(turn: Turn, spans: list[TurnSpan]) -> list[StageBar]:
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
        )
        for s in spans
    ]
    return sorted(bars, key=lambda b: (STAGE_ORDER.get(b.stage, 9), b.start_ms))


def waited_on(bars: list[StageBar]) -> str | None:
    """The header stage that finished last: the one the merge (and the user) waited for."""
    header = [b for b in bars if b.stage in ("orchestrator", "researcher")]
    return max(header, key=lambda b: b.end_ms).stage if len(header) == 2 else None


def overlap_ms(bars: list[StageBar]) -> float:
    """How long the orchestrator and the researcher ran at the same time."""
    orch = [b for b in bars if b.stage == "orchestrator"]
    research = [b for b in bars if b.stage == "researcher"]
    if not orch or not research:
        return 0.0
    return max(
        0.0, min(orch[0].end_ms, research[0].end_ms) - max(orch[0].start_ms, research[0].start_ms)
    )


def waterfall_lines(
    bars: list[StageBar], *, total_ms: float, width: int = 48
) -> list[tuple[str, str]]:
    """(label, bar) pairs: '.' is queue wait, '█' is running, on a shared time axis."""
    scale = width / max(total_ms, 1.0)
    lines = []
    for bar in bars:
        wait_from = bar.wait_start_ms if bar.wait_start_ms is not None else bar.start_ms
        lead = int(max(0.0, wait_from) * scale)
        wait = max(0, int(bar.start_ms * scale) - lead)
        run = max(1, int(bar.end_ms * scale) - lead - wait)
        lines.append((bar.stage, " " * lead + "." * wait + "█" * run))
    return lines
