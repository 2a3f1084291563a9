"""`chordline trace`, `critical-path`, `up`, `proc`, `flower-gate`: operating chordline."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from shared.commands.common import console, needed_services

TraceWidth = Annotated[int, typer.Option(help="Width of the timeline in characters.", min=20)]


def trace(
    turn_id: Annotated[str, typer.Argument(help="The turn's id, as enqueue_turn returned it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as JSON.")] = False,
    width: TraceWidth = 60,
) -> None:
    """Draw a turn's stages on one time axis: which ran in parallel, the merge, what the
    user waited on, and per stage its queue, worker, queue wait, attempt and fields."""
    from shared.db.session import session_scope
    from shared.db.spans import spans_of
    from shared.db.turns import load_turn
    from shared.trace import render_trace, trace_of
    from shared.validation import check_turn_id

    turn_id = check_turn_id(turn_id)
    with needed_services(redis=False), session_scope() as session:
        view = trace_of(load_turn(session, turn_id), spans_of(session, turn_id))
    if as_json:
        print(json.dumps(view.as_dict()))
        return
    console.print(render_trace(view, width=width))


def critical_path(
    last: Annotated[int, typer.Option(help="How many of the latest completed turns.")] = 100,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Only this tenant's turns.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """For the last N turns: which stage bounded each one (orchestrator or researcher before
    the merge, then queue waits, merge, agent), as shares of turns and of milliseconds."""
    from shared.critical_path import check_last, recent_traces, render_report, summarise
    from shared.db.session import session_scope
    from shared.validation import check_slug

    check_last(last)
    if tenant is not None:
        check_slug("tenant", tenant)
    with needed_services(redis=False), session_scope() as session:
        report = summarise(recent_traces(session, last=last, tenant_id=tenant))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console.print(render_report(report))


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command()(trace)
    app.command("critical-path")(critical_path)
