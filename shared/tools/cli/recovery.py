"""`chordline bench-recovery`: how fast the turns of a killed worker end."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from shared.tools.cli.common import BENCHMARKS, console, err, needed_services


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command("bench-recovery", rich_help_panel=BENCHMARKS)(bench_recovery)


def bench_recovery(
    rate: Annotated[float, typer.Option(help="Turns per second (Poisson arrivals).")] = 8.0,
    rounds: Annotated[
        int, typer.Option(help="Workers killed, one per round, cycling through the turn queues.")
    ] = 4,
    warmup: Annotated[float, typer.Option(help="Seconds of load before each kill.")] = 6.0,
    seed: Annotated[int, typer.Option(help="Seed of the arrival process.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """SIGKILL one turn worker per round under load; time until its turns have ended."""
    from shared.tools.bench.recovery import print_recovery_table, run_recovery_bench

    with needed_services():
        result = run_recovery_bench(
            rate=rate, rounds=rounds, warmup_s=warmup, seed=seed, progress=err.print
        )
    if as_json:
        print(json.dumps(result))
    else:
        print_recovery_table(result, console)
    if not result["within_target"]:
        raise typer.Exit(1)
