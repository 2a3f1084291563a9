"""`chordline rescore ...`: batch re-scoring of historical conversations.

chordline rescore --tenant acme --set thresholds.accurate=0.7      start a run, follow it
chordline rescore status RUN [--watch]                             from any terminal
chordline rescore report RUN [--json] [--csv PATH]
chordline rescore resume RUN | cancel RUN | list --tenant acme
chordline rescore history --tenant bench-rescore --turns 20000     synthetic history
chordline rescore bench                                            throughput and live p99
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from shared.config import get_settings
from shared.counts import counted
from shared.tools.cli.common import INSPECT, CommandGroup, console, err, needed_services

if TYPE_CHECKING:
    from shared.rescoring.runs import RunProgress
    from shared.rescoring.selection import RunRequest

app = typer.Typer(
    cls=CommandGroup,
    help="Re-score a tenant's past turns against the current knowledge base and new settings.",
)

RunArg = Annotated[str, typer.Argument(help="The run's id, as `chordline rescore` printed it.")]
POLL_S = 0.5


class RateColumn(ProgressColumn):
    """Turns per minute, from rich's own moving estimate of the speed."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed * 60:,.0f} turns/min" if speed else "- turns/min", style="cyan")


@contextlib.contextmanager
def rescoring_workers() -> Iterator[None]:
    """Use the rescoring workers that already run; otherwise run one for this command."""
    from shared.tools.stack.procfile import running_workers, workers_answering

    if workers_answering(["rescoring"]):
        yield
        return
    err.print("[dim]no rescoring worker answers: starting one (Procfile: rescoring)[/]")
    with running_workers(["rescoring"], log_dir=get_settings().data_dir / "logs"):
        yield


def follow(run_id: str) -> RunProgress:
    """A live progress bar until the run is completed or cancelled."""
    from shared.rescoring.runs import RunStatus, read_progress

    progress = read_progress(run_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("re-scoring", total=progress.total, completed=progress.done)
        while progress.status is RunStatus.RUNNING:
            time.sleep(POLL_S)
            progress = read_progress(run_id)
            bar.update(task, completed=progress.done)
        bar.update(task, description=progress.status.value)
    return progress


def follow_until_detached(run_id: str) -> None:
    from shared.rescoring.runs import RunStatus

    try:
        progress = follow(run_id)
    except KeyboardInterrupt:
        err.print(
            f"\ndetached; run {run_id} goes on while a rescoring worker runs. "
            f"Follow it with `chordline rescore status {run_id} --watch`, or "
            f"`chordline rescore resume {run_id}` later."
        )
        raise typer.Exit(130) from None
    rate = progress.turns_per_minute(progress.finished_at or progress.created_at)
    console.print(
        f"run {run_id}: {progress.status.value}, "
        f"{progress.done:,}/{counted(progress.total, 'turn', grouped=True)} "
        f"at {rate:,.0f} turns/min"
    )
    if progress.status is RunStatus.COMPLETED or progress.done:
        console.print(f"report: chordline rescore report {run_id}")


@app.callback(invoke_without_command=True)
def start(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Turns created on or after (YYYY-MM-DD or ISO time, UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Turns created before the end of this day (or time).")
    ] = None,
    conversation: Annotated[
        str | None, typer.Option("--conversation", "-c", help="Only this conversation.")
    ] = None,
    stages: Annotated[
        str | None, typer.Option(help="Stages to re-run: orchestrator,researcher (default both).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a tenant setting for this run: key=value."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Turns per task (default CHORDLINE_RESCORE_BATCH_SIZE).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the selection and settings; create nothing.")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start the run and return; do not follow it.")
    ] = False,
) -> None:
    """Re-score a tenant's past turns: `chordline rescore --tenant T [options]`."""
    from shared.errors import InvalidInput
    from shared.rescoring.selection import RunRequest

    if ctx.invoked_subcommand is not None:
        return
    if tenant is None:
        raise InvalidInput(
            "--tenant", "is required to start a run (see `chordline rescore --help`)"
        )
    request = RunRequest(
        tenant_id=tenant,
        since=since,
        until=until,
        conversation=conversation,
        stages=stages,
        set_pairs=tuple(set_ or ()),
        batch_size=batch_size,
    )
    if dry_run:
        _dry_run(request)
        return
    _start(request, detach=detach)


def _dry_run(request: RunRequest) -> None:
    from shared.db.session import session_scope
    from shared.rescoring.selection import plan_run

    with needed_services(redis=False), session_scope() as session:
        plan = plan_run(session, request)
    console.print(
        f"dry run: {counted(plan.total_turns, 'turn', grouped=True)} of tenant "
        f"{plan.tenant_id!r} would be re-scored in "
        f"{counted(plan.total_batches, 'batch', grouped=True)} of {plan.batch_size}; "
        "nothing was created"
    )
    console.print_json(
        data={
            "tenant": plan.tenant_id,
            "turns": plan.total_turns,
            "batches": plan.total_batches,
            "stages": [s.value for s in plan.stages],
            "since": plan.since.isoformat() if plan.since else None,
            "until": plan.until.isoformat() if plan.until else None,
            "conversation": plan.conversation,
            "overrides": plan.overrides,
            "settings": plan.settings.model_dump(mode="json"),
        }
    )


def _start(request: RunRequest, *, detach: bool) -> None:
    from shared.db.session import session_scope
    from shared.rescoring.runs import start_run
    from shared.rescoring.selection import plan_run

    with needed_services():
        with session_scope() as session:
            plan_run(session, request)  # refuse bad input before any worker starts
        if detach:
            started = start_run(request)
            total = counted(started.plan.total_turns, "turn", grouped=True)
            console.print(f"run {started.run_id}: {total} queued")
            return
        with rescoring_workers():
            started = start_run(request)
            console.print(
                f"run {started.run_id}: "
                f"{counted(started.plan.total_turns, 'turn', grouped=True)} in "
                f"{counted(started.batches_sent, 'batch', grouped=True)} "
                "on the rescoring queue"
            )
            follow_until_detached(started.run_id)


def _status_table(progress: RunProgress) -> Table:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    rate = progress.turns_per_minute(now)
    eta = progress.remaining / rate * 60 if rate and progress.status.value == "running" else None
    table = Table(show_header=False)
    for label, value in (
        ("run", progress.run_id),
        ("tenant", progress.tenant_id),
        ("status", progress.status.value),
        ("turns", f"{progress.done:,} / {progress.total:,}"),
        ("rate", f"{rate:,.0f} turns/min (average since the start)"),
        ("eta", f"{eta:,.0f} s" if eta is not None else "-"),
        ("created", f"{progress.created_at:%Y-%m-%d %H:%M:%S %Z}"),
        (
            "finished",
            f"{progress.finished_at:%Y-%m-%d %H:%M:%S %Z}" if progress.finished_at else "-",
        ),
    ):
        table.add_row(label, value)
    return table


@app.command("status")
def status(
    run_id: RunArg,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow with a progress bar.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """How far a run is: turns done/total, rate, ETA. Works from any terminal."""
    from shared.rescoring.runs import read_progress

    with needed_services(redis=False):
        progress = read_progress(run_id)
        if watch:
            follow_until_detached(run_id)
            return
    if as_json:
        print(
            json.dumps(
                {
                    "run": progress.run_id,
                    "tenant": progress.tenant_id,
                    "status": progress.status.value,
                    "done": progress.done,
                    "total": progress.total,
                }
            )
        )
        return
    console.print(_status_table(progress))


@app.command("report")
def report(
    run_id: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Also write one row per scored turn here.")
    ] = None,
    examples: Annotated[int, typer.Option(help="How many changed turns to show.", min=0)] = 10,
) -> None:
    """What would change: agent matrix, kb level shifts, share changed, examples, cost."""
    from shared.db.session import session_scope
    from shared.tools.reports.rescoring import build_report, export_csv, print_report

    with needed_services(redis=False), session_scope() as session:
        result = build_report(session, run_id, examples=examples)
        rows = export_csv(session, run_id, csv_path) if csv_path else None
    if as_json:
        print(json.dumps(result.as_json()))
    else:
        print_report(result, console)
    if csv_path is not None:
        err.print(f"{rows:,} rows written to {csv_path}")


@app.command("resume")
def resume(
    run_id: RunArg,
    detach: Annotated[bool, typer.Option("--detach", help="Re-enqueue and return.")] = False,
) -> None:
    """Re-enqueue a run's unscored batches (after a crash, or to continue a cancelled run)."""
    from shared.rescoring.runs import resume_run

    with needed_services():
        if detach:
            console.print(f"run {run_id}: {resume_run(run_id):,} batches re-enqueued")
            return
        with rescoring_workers():
            console.print(f"run {run_id}: {resume_run(run_id):,} batches re-enqueued")
            follow_until_detached(run_id)


@app.command("cancel")
def cancel(run_id: RunArg) -> None:
    """Stop a run: queued batches do nothing, running ones stop within a few turns."""
    from shared.rescoring.runs import cancel_run

    with needed_services(redis=False):
        progress = cancel_run(run_id)
    console.print(
        f"run {run_id}: cancelled at {progress.done:,}/{progress.total:,} turns; "
        f"`chordline rescore resume {run_id}` continues it"
    )


@app.command("list")
def list_runs(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")],
    last: Annotated[int, typer.Option(help="How many of the latest runs.", min=1, max=1000)] = 20,
) -> None:
    """A tenant's latest runs."""
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.rescoring.runs import list_runs as latest_runs

    run_column = Column("run", no_wrap=True, min_width=36)
    table = Table(run_column, "status", "turns", "stages", "overrides", "created")
    with needed_services(redis=False), session_scope() as session:
        require_tenant(session, tenant)
        for run in latest_runs(session, tenant, limit=last):
            table.add_row(
                str(run.id),
                run.status,
                f"{run.total_turns:,}",
                ",".join(run.stages),
                json.dumps(run.overrides) if run.overrides else "-",
                f"{run.created_at:%Y-%m-%d %H:%M:%S}",
            )
    console.print(table)


@app.command("history")
def history(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")],
    turns: Annotated[int, typer.Option(help="How many finished turns to write.")] = 10_000,
    per_conversation: Annotated[int, typer.Option(help="Turns per conversation.")] = 6,
    days: Annotated[int, typer.Option(help="Spread over this many past days.", min=1)] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the message draw.")] = 7,
) -> None:
    """Write a synthetic history of finished turns (for benchmarks). A tenant that does not
    exist yet is created with the demo knowledge base."""
    from shared.tools.bench.rescoring import prepare_history_tenant
    from shared.tools.synthetic.rescoring import generate_history

    with needed_services(redis=False):
        prepare_history_tenant(tenant)
        made = generate_history(
            tenant_id=tenant,
            turns=turns,
            turns_per_conversation=per_conversation,
            days=days,
            seed=seed,
        )
    console.print(
        f"{made.turns:,} turns in {made.conversations:,} conversations written to tenant "
        f"{tenant!r} in {made.seconds:.1f} s"
    )


@app.command("bench")
def bench(
    turns: Annotated[int, typer.Option(help="History size for the throughput run.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Live turns per second during `bench`.")] = 25.0,
    duration: Annotated[float, typer.Option(help="Seconds of live arrivals per topology.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Re-scoring throughput with zero-latency simulated providers, then live p99 from
    `chordline bench` without and with a full-speed re-scoring run alongside."""
    from shared.tools.bench.rescoring import print_rescore_bench, run_rescore_bench

    with needed_services():
        result = run_rescore_bench(turns=turns, rate=rate, duration_s=duration, progress=err)
    if as_json:
        print(json.dumps(result))
    else:
        print_rescore_bench(result, console)


def register(root: typer.Typer) -> None:
    """Add this area's commands to `root`."""
    root.add_typer(app, name="rescore", rich_help_panel=INSPECT)
