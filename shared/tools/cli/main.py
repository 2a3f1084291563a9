"""The `chordline` command."""

from __future__ import annotations

import json
import logging.config
import math
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shared.config import get_settings
from shared.counts import counted
from shared.errors import ChordlineError
from shared.logs import logging_config
from shared.tools.cli import conversations as conversation_commands
from shared.tools.cli import kb as kb_commands
from shared.tools.cli import ops as ops_commands
from shared.tools.cli import providers as provider_commands
from shared.tools.cli import recovery as recovery_commands
from shared.tools.cli import rescore as rescore_commands
from shared.tools.cli import turns as turn_commands
from shared.tools.cli import web as web_commands
from shared.tools.cli.common import (
    BENCHMARKS,
    OPERATE,
    START,
    CommandGroup,
    console,
    err,
    needed_services,
    turn_workers,
)


class TopLevel(CommandGroup):
    """`chordline --help` lists commands in the order a person reaches for them."""

    order = (
        # START: try it, run it, talk to it, set up a tenant and its knowledge
        "demo",
        "up",
        "turn",
        "tenant",
        "kb",
        "conversation",
        "web",
        "key",
        # INSPECT: what happened to turns
        "trace",
        "critical-path",
        "rescore",
        "usage",
        "doctor",
        # OPERATE
        "migrate",
        "proc",
        "flower-gate",
        # BENCHMARKS
        "bench",
        "bench-recovery",
    )


class TenantCommands(CommandGroup):
    order = ("create", "list", "show", "set")


app = typer.Typer(
    cls=TopLevel,
    help="chordline: each conversation turn as a distributed Celery workflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(
    cls=TenantCommands, help="Tenants and their settings.", no_args_is_help=True
)
app.add_typer(turn_commands.app, name="turn", rich_help_panel=START)
app.add_typer(tenant_app, name="tenant", rich_help_panel=START)
app.add_typer(kb_commands.app, name="kb", rich_help_panel=START)
conversation_commands.register(app)
for module in (
    ops_commands,
    rescore_commands,
    provider_commands,
    recovery_commands,
    web_commands,
):
    module.register(app)


def _installed_version() -> str:
    try:
        return version("chordline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(asked: bool) -> None:
    if asked:
        console.print(f"chordline {_installed_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """chordline: each conversation turn as a distributed Celery workflow."""


def _setup_logging() -> None:
    settings = get_settings()
    logging.config.dictConfig(logging_config(level="WARNING", fmt=settings.log_format))


def _fail(exc: ChordlineError) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Run a command; a chordline error, or a server that cannot be reached, is one line."""
    from shared.connectivity import as_unreachable

    try:
        _setup_logging()
        app()
    except ChordlineError as exc:
        _fail(exc)
    except Exception as exc:
        unreachable = as_unreachable(exc)
        if unreachable is None:
            raise
        _fail(unreachable)


@app.command(rich_help_panel=OPERATE)
def migrate() -> None:
    """Bring the database schema to the latest revision."""
    with needed_services(redis=False):
        console.print("schema is at the latest revision")


@app.command(rich_help_panel=START)
def demo(
    latency: Annotated[
        str,
        typer.Option(
            help="'auto' (the model APIs when OPENAI_API_KEY / COHERE_API_KEY are set, "
            "simulated otherwise), 'simulated' (the default simulated stage times, halved) "
            "or 'none' (offline providers at full speed)"
        ),
    ] = "auto",
) -> None:
    """Set up the demo tenant, play a scripted sales conversation, print what each turn did."""
    from shared.tools.demo.conversation import run_demo

    env = provider_commands.demo_env(latency)
    with needed_services(), turn_workers(env=env):
        code = run_demo(console=console)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- tenants


@tenant_app.command("create")
def tenant_create(
    tenant: Annotated[str, typer.Argument(help="Tenant id.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, e.g. topology=sequential")
    ] = None,
) -> None:
    """Create a tenant (an existing one keeps its name; --set still applies), print its
    settings."""
    from shared.db.session import session_scope
    from shared.db.tenants import (
        create_tenant,
        parse_setting_pairs,
        require_tenant,
        update_tenant_settings,
    )

    overrides = parse_setting_pairs(set_ or [], field="--set")
    # one transaction: a refused setting leaves no tenant behind
    with needed_services(redis=False), session_scope() as session:
        created = create_tenant(session, tenant_id=tenant, name=name)
        if overrides:
            settings = update_tenant_settings(session, tenant, overrides)
        else:
            settings = require_tenant(session, tenant)
    if created:
        said = f"created tenant {tenant}" + (f" ({name})" if name else "")
    elif overrides:
        said = f"tenant {tenant} already exists; set {', '.join(overrides)}"
    else:
        said = f"tenant {tenant} already exists; left as it was"
    console.print(said, markup=False, highlight=False)
    console.print_json(settings.model_dump_json())


@tenant_app.command("list")
def tenant_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """List the tenants: id, name, documents in the knowledge base, turns."""
    from dataclasses import asdict

    from shared.db.session import session_scope
    from shared.db.tenants import tenant_overview

    with needed_services(redis=False), session_scope() as session:
        tenants = tenant_overview(session)
    if as_json:
        print(json.dumps([asdict(t) for t in tenants]))
        return
    table = Table("tenant", "name", "documents", "turns")
    for row in tenants:
        table.add_row(
            escape(row.id), escape(row.name or "-"), f"{row.documents:,}", f"{row.turns:,}"
        )
    console.print(table)
    console.print(counted(len(tenants), "tenant"), highlight=False)


@tenant_app.command("set")
def tenant_set(
    tenant: Annotated[str, typer.Argument(help="Tenant id.")],
    pairs: Annotated[list[str], typer.Argument(help="key=value, e.g. thresholds.accurate=0.7")],
) -> None:
    """Change a tenant's settings."""
    from shared.db.session import session_scope
    from shared.db.tenants import parse_setting_pairs, update_tenant_settings

    overrides = parse_setting_pairs(pairs, field="settings")
    with needed_services(redis=False), session_scope() as session:
        settings = update_tenant_settings(session, tenant, overrides)
    console.print_json(settings.model_dump_json())


@tenant_app.command("show")
def tenant_show(tenant: Annotated[str, typer.Argument(help="Tenant id.")]) -> None:
    """Print a tenant's effective settings."""
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant

    with needed_services(redis=False), session_scope() as session:
        console.print_json(require_tenant(session, tenant).model_dump_json())


# --------------------------------------------------------------------------- benchmark


def _above_zero(value: float) -> float:
    """A rate, a duration or a skew: above 0 and finite (0, a negative number, NaN and
    infinity are refused alike, in the words of the upper limits, which
    shared.tools.bench.turns checks before anything runs)."""
    if not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"is {value:g}; it must be above 0")  # Typer names the option
    return value


@app.command(rich_help_panel=BENCHMARKS)
def bench(
    rate: Annotated[
        float,
        typer.Option(help="Turns per second (Poisson arrivals), above 0.", callback=_above_zero),
    ] = 25.0,
    duration: Annotated[
        float,
        typer.Option(help="Seconds of arrivals per topology, above 0.", callback=_above_zero),
    ] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the arrival process.")] = 7,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also run a bare Celery chord of the same shape (no Postgres) on the same "
            "Redis, arrivals and stage times, and compare.",
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Draw the latency CDFs of every system into this PNG file."),
    ] = None,
    topology: Annotated[
        list[str] | None,
        typer.Option(
            "--topology",
            help="Only this topology (repeat for several; default: parallel and sequential).",
        ),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            help="Cut the arrivals into this many rounds, which the systems take in turn "
            "(default: one per 10 s of duration).",
        ),
    ] = None,
    via: Annotated[
        str,
        typer.Option(
            help="'client' (enqueue_turn in this process) or 'http' (also the same arrivals "
            "posted through the HTTP API, as <topology>-http, beside the client path).",
        ),
    ] = "client",
    tenants: Annotated[
        int | None,
        typer.Option(
            help="Many tenants on one fleet: this many tenants (2 or more), each with its own "
            "arrivals, one of them flooding (see --skew); compared with the quiet tenants' "
            "solo run.",
        ),
    ] = None,
    skew: Annotated[
        float,
        typer.Option(
            help="With --tenants: the noisy tenant sends this many times the share "
            "of each other tenant.",
            callback=_above_zero,
        ),
    ] = 10.0,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="With --tenants: a setting of every bench tenant, key=value "
            "(e.g. admission.max_in_flight=40).",
        ),
    ] = None,
) -> None:
    """Open-loop benchmark of both topologies, beside a bare Celery chord with --baseline.

    Simulated stage latencies, the same arrivals for every system, in interleaved rounds;
    overhead percentiles, the CPU milliseconds per turn of every process and the Postgres
    WAL per turn. With --tenants: latency per tenant with one tenant flooding, against the
    quiet tenants' solo run."""
    from shared.schemas import Topology
    from shared.tools.bench.redis_forks import fork_warning
    from shared.tools.bench.turns import TOPOLOGIES, plot_cdfs, print_bench_table, run_bench

    if tenants is not None:
        _bench_tenants(
            rate=rate,
            duration=duration,
            tenants=tenants,
            skew=skew,
            seed=seed,
            rounds=rounds,
            pairs=set_ or [],
            as_json=as_json,
        )
        return
    if set_:
        raise typer.BadParameter("only with --tenants", param_hint="--set")

    known = [t.value for t in TOPOLOGIES]
    for name in topology or []:
        if name not in known:
            raise typer.BadParameter(
                f"{name!r} is not one of {', '.join(known)}", param_hint="--topology"
            )
    chosen = tuple(Topology(name) for name in dict.fromkeys(topology or known))
    if via not in ("client", "http"):
        raise typer.BadParameter(f"{via!r} is not one of client, http", param_hint="--via")
    if plot is not None and plot.suffix.lower() != ".png":
        raise typer.BadParameter(f"{plot} does not end in .png", param_hint="--plot")
    if plot is not None and not plot.resolve().parent.is_dir():
        raise typer.BadParameter(f"{plot.parent} is not a folder", param_hint="--plot")
    with needed_services() as embedded:
        run = run_bench(
            rate=rate,
            duration_s=duration,
            seed=seed,
            baseline=baseline,
            rounds=rounds,
            topologies=chosen,
            via_http=via == "http",
            progress=err,
            compact_redis=embedded.redis is not None,
        )
    if (warning := fork_warning(run.summary.get("redis_forks"))) is not None:
        err.print(warning, soft_wrap=True)  # one line, whatever the width
    if plot is not None:
        plot_cdfs(run, plot)
        err.print(f"latency CDFs written to {plot}")
    if as_json:
        print(json.dumps(run.summary))
    else:
        print_bench_table(run.summary, console)


def _bench_tenants(
    *,
    rate: float,
    duration: float,
    tenants: int,
    skew: float,
    seed: int,
    rounds: int | None,
    pairs: list[str],
    as_json: bool,
) -> None:
    from shared.db.tenants import apply_overrides, parse_setting_pairs
    from shared.schemas import TenantSettings
    from shared.tools.bench.tenants import print_tenants_table, run_tenants_bench, schedule

    overrides = parse_setting_pairs(pairs, field="--set")
    settings = apply_overrides(TenantSettings(), overrides, field="--set")
    schedule(rate, duration, tenants, skew, seed)  # refuses a bad load before anything starts
    with needed_services():
        result = run_tenants_bench(
            rate=rate,
            duration_s=duration,
            tenants=tenants,
            skew=skew,
            seed=seed,
            rounds=rounds,
            settings=settings.model_dump(mode="json", exclude_defaults=True),
            progress=err,
        )
    if as_json:
        print(json.dumps(result))
    else:
        print_tenants_table(result, console)


if __name__ == "__main__":  # pragma: no cover
    main()
