"""`chordline trace`, `critical-path`, `up`, `proc`, `flower-gate`: operating chordline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Annotated

import typer

from shared.tools.cli.common import INSPECT, OPERATE, START, console, needed_services

TraceWidth = Annotated[int, typer.Option(help="Width of the timeline in characters.", min=20)]


def trace(
    turn_id: Annotated[str, typer.Argument(help="The turn's id, as enqueue_turn returned it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as JSON.")] = False,
    width: TraceWidth = 60,
) -> None:
    """Draw a turn's stages on one time axis.

    Which ran in parallel, the merge, what the user waited on, and per stage its queue,
    worker, queue wait, attempt and fields."""
    from shared.db.session import session_scope
    from shared.db.spans import spans_of
    from shared.db.turns import load_turn
    from shared.tools.reports.trace import render_trace
    from shared.trace import trace_of
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
    """Which stage the last N turns waited on, as shares of turns and of milliseconds.

    The orchestrator or the researcher before the merge, then queue waits, the merge and
    the agent."""
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.tools.reports.critical_path import (
        check_last,
        recent_traces,
        render_report,
        summarise,
    )
    from shared.validation import check_slug

    check_last(last)
    if tenant is not None:
        check_slug("tenant", tenant)
    with needed_services(redis=False), session_scope() as session:
        if tenant is not None:
            require_tenant(session, tenant)  # an unknown tenant is named, not an empty report
        report = summarise(recent_traces(session, last=last, tenant_id=tenant))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console.print(render_report(report))


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command(rich_help_panel=INSPECT)(trace)
    app.command("critical-path", rich_help_panel=INSPECT)(critical_path)
    app.command(rich_help_panel=START)(up)
    app.command(rich_help_panel=OPERATE)(proc)
    app.command("flower-gate", rich_help_panel=OPERATE)(flower_gate)


def up(
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated Procfile entries to run (default: all but release)."),
    ] = None,
) -> None:
    """Run the whole stack, Flower included; Ctrl-C stops all of it.

    Postgres and Redis (embedded unless their URLs are set), the migrations, and every
    Procfile process."""
    from shared.tools.stack.devstack import run_stack

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    code = run_stack(say=lambda line: console.print(line, highlight=False), only=names)
    raise typer.Exit(code)


def proc(
    name: Annotated[str, typer.Argument(help="A Procfile entry, e.g. orchestrator or flower.")],
) -> None:
    """Replace this process with one Procfile entry (what a container runs)."""
    from shared.tools.stack.processes import PROJECT_ROOT, process_env
    from shared.tools.stack.procfile import read_procfile

    entries = read_procfile()
    if name not in entries:
        from shared.errors import InvalidInput

        raise InvalidInput("name", f"{name!r} is not in the Procfile ({', '.join(entries)})")
    os.chdir(PROJECT_ROOT)
    # Through the shell, as Procfile runners do, so ${VAR:-default} works; exec leaves the process
    # itself in our place (PID 1 in a container), so signals reach it directly.
    command = ["/bin/sh", "-c", f"exec {entries[name]}"]
    os.execve(command[0], command, process_env(dict(os.environ)))  # noqa: S606


def flower_gate() -> None:
    """Serve Flower's UI with basic auth, and its /metrics alone on a private port."""
    from shared.config import get_settings
    from shared.tools.stack.flower_gate import open_gate

    settings = get_settings().flower
    gate = open_gate(settings)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    console.print(
        f"flower UI at http://{settings.ui_host}:{settings.ui_port}/ (basic auth), "
        f"its metrics at http://{settings.metrics_host}:{settings.metrics_port}/metrics, "
        f"Flower itself on 127.0.0.1:{settings.upstream_port}",
        highlight=False,
    )
    with contextlib.suppress(KeyboardInterrupt):
        gate.serve_forever()
