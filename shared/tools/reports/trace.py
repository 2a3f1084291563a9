"""A turn's trace drawn on a terminal: the timeline `chordline trace` prints and the demo's
waterfall. The trace itself, the stages on the turn's time axis and its critical path, is
shared/trace.py."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.trace import StageBar, TurnTrace, overlap_ms


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


STAGE_COLOURS = {
    "orchestrator": "cyan",
    "researcher": "magenta",
    "merge": "white",
    "agent": "green",
}
MERGE_MARK = "┊"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _timeline_row(
    bar: StageBar, *, scale: float, width: int, merge_col: int | None, highlight: bool
) -> Text:
    cells = [" "] * width
    styles = [""] * width
    colour = "bold yellow" if highlight else STAGE_COLOURS.get(bar.stage, "white")
    wait_from = bar.wait_start_ms if bar.wait_start_ms is not None else bar.start_ms
    first = min(width - 1, max(0, int(wait_from * scale)))
    start = min(width - 1, max(first, int(bar.start_ms * scale)))
    end = min(width, max(start + 1, int(bar.end_ms * scale)))
    for col in range(first, start):
        cells[col], styles[col] = "·", "dim"
    for col in range(start, end):
        cells[col], styles[col] = "█", colour
    if merge_col is not None and bar.stage != "merge" and cells[merge_col] == " ":
        cells[merge_col], styles[merge_col] = MERGE_MARK, "bold white"
    text = Text()
    for char, style in zip(cells, styles, strict=True):
        text.append(char, style=style or None)
    return text


def _axis(total_ms: float, width: int) -> Text:
    ticks = 4
    line = [" "] * width
    for i in range(ticks + 1):
        label = f"{total_ms * i / ticks:,.0f}"
        col = min(width - len(label), int(width * i / ticks))
        line[col : col + len(label)] = list(label)
    return Text("".join(line) + " ms", style="dim")


def render_timeline(trace: TurnTrace, *, width: int = 60) -> Table:
    """One bar per stage on the turn's time axis: '·' queue wait, '█' running; the merge's
    start is marked across the header stages' rows, and the stage waited on is highlighted."""
    path = trace.path
    total = max([path.total_ms, trace.latency_ms or 0.0, *(b.end_ms for b in trace.bars), 1.0])
    scale = width / total
    merge = next((b for b in trace.bars if b.stage == "merge"), None)
    merge_col = None if merge is None else min(width - 1, int(merge.start_ms * scale))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("stage", no_wrap=True)
    table.add_column("timeline", no_wrap=True)
    table.add_column("note", no_wrap=True)
    table.add_row("", _axis(total, width), "")
    for bar in trace.bars:
        highlight = bar.stage == path.waited_on
        label = Text(bar.stage, style="bold yellow" if highlight else "")
        if bar.stage == "merge":
            label = Text(f"{MERGE_MARK} merge", style="bold")
        note = Text(f"{bar.duration_ms:,.0f} ms")
        if highlight:
            note.append("  ◀ waited on", style="bold yellow")
        if bar.attempt > 1:
            note.append(f"  attempt {bar.attempt}", style="red")
        if bar.outcome != "ok":
            note.append(f"  {bar.outcome}", style="red")
        table.add_row(
            label,
            _timeline_row(bar, scale=scale, width=width, merge_col=merge_col, highlight=highlight),
            note,
        )
    return table


def render_stage_table(trace: TurnTrace) -> Table:
    critical = {id(b) for b in trace.path.chain}
    table = Table(
        title="stages (* on the critical path; ms from the turn's acceptance)",
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="bold underline",
    )
    for column in (
        "stage",
        "queue",
        "worker / pid",
        "queued",
        "started",
        "finished",
        "queue wait",
        "ran",
        "attempt",
        "outcome",
    ):
        numeric = column in ("queued", "started", "finished", "queue wait", "ran", "attempt")
        table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    for bar in trace.bars:
        table.add_row(
            ("* " if id(bar) in critical else "  ") + bar.stage,
            bar.queue or "-",
            f"{bar.worker or '-'} / {bar.pid or '-'}",
            _num(bar.wait_start_ms),
            _num(bar.start_ms),
            _num(bar.end_ms),
            _num(bar.queue_wait_ms),
            _num(bar.duration_ms),
            str(bar.attempt),
            bar.outcome,
        )
    return table


def render_fields_written(trace: TurnTrace) -> Text:
    text = Text("fields written\n", style="bold")
    for bar in trace.bars:
        text.append(f"  {bar.stage:<13}", style=STAGE_COLOURS.get(bar.stage))
        text.append((", ".join(bar.fields) or "-") + "\n")
    return text


def render_trace(trace: TurnTrace, *, width: int = 60) -> RenderableType:
    path = trace.path
    header = Text()
    header.append(f"turn {trace.turn_id}", style="bold")
    header.append(
        f"  tenant {trace.tenant_id}  {trace.topology}  {trace.status}"
        f"  agent {trace.next_agent or '-'}  kb {trace.kb_information_level or '-'}"
        f"  latency {_ms(trace.latency_ms)}"
    )
    summary = Text()
    if path.waited_on:
        summary.append("waited on: ", style="bold")
        summary.append(path.waited_on, style="bold yellow")
    if {"orchestrator", "researcher"} <= {b.stage for b in trace.bars}:
        summary.append(
            f"   orchestrator and researcher overlapped {overlap_ms(trace.bars):,.0f} ms"
        )
    route = Text("critical path: ", style="bold")
    route.append(" → ".join(f"{s.stage} {s.duration_ms:,.0f} ms" for s in path.segments) or "-")
    if not trace.bars:
        return Group(header, Text("no stage has finished yet", style="dim"))
    return Group(
        header,
        summary,
        Text(),
        render_timeline(trace, width=width),
        Text("· queue wait   █ running   ┊ the merge starts", style="dim"),
        Text(),
        route,
        Text(),
        render_stage_table(trace),
        render_fields_written(trace),
    )
