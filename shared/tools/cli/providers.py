"""`chordline doctor` (is the stack up: Postgres, Redis, workers, beat; which model providers
are active, and does each answer) and `chordline usage` (what a tenant's turns spent)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shared.config import get_settings
from shared.counts import counted
from shared.errors import InvalidInput
from shared.schemas import StageModels
from shared.tools.cli.common import INSPECT, console, err, needed_services

if TYPE_CHECKING:
    from shared.tools.stack.checks import Check as StackCheck

SIMULATED_DEMO_ENV = {
    "CHORDLINE_PROVIDERS": "simulated",
    "CHORDLINE_SIMULATED_LATENCY_SCALE": "0.5",
}


def demo_env(latency: str) -> dict[str, str]:
    """The demo's worker environment: the model APIs when keys are set ('auto'), else
    simulated latencies; or offline at full speed ('none')."""
    if latency == "auto":
        settings = get_settings().providers
        uses_apis = any(
            settings.stage_backend(stage) != "local" for stage in ("chat", "embedding", "rerank")
        )
        return {} if uses_apis else SIMULATED_DEMO_ENV
    if latency == "simulated":
        return SIMULATED_DEMO_ENV
    if latency == "none":
        return {"CHORDLINE_PROVIDERS": "offline"}
    raise InvalidInput("--latency", f"{latency!r} is not one of auto, simulated, none")


def _tenant_models(tenant: str | None) -> StageModels:
    if tenant is None:
        return StageModels()
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant

    with needed_services(redis=False), session_scope() as session:
        return require_tenant(session, tenant).models


def _print_stack(checks: list[StackCheck]) -> None:
    width = max(len(check.name) for check in checks)
    for check in checks:
        status = "[green]ok[/]  " if check.ok else "skip" if check.skipped else "[bold red]fail[/]"
        line = f"{status}  {escape(check.name):<{width}}  {escape(check.detail)}"
        if not check.ok and check.fix:
            line += f"; {escape(check.fix)}"
        console.print(line, highlight=False, soft_wrap=True)


def doctor(
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", "-t", help="Check this tenant's models (default: defaults)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds each provider has to answer.", min=0.1, max=60)
    ] = 5.0,
    providers_only: Annotated[
        bool,
        typer.Option(
            "--providers-only", help="Check only the model providers, not Postgres, Redis, workers."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check the stack (Postgres, migrations, pgvector; Redis, its eviction policy and
    persistence; a worker on each turn queue and on maintenance; beat), then which provider
    serves each stage and whether it answers (one cheap call each). Exits 1 if any fails.

    Starts nothing. Never prints a key: endpoints are shown without credentials.
    """
    from shared.providers.health import check_stages
    from shared.tools.stack.checks import stack_checks

    stack = [] if providers_only else stack_checks(get_settings())
    settings = get_settings().providers
    checks = check_stages(settings, models=_tenant_models(tenant), timeout_s=timeout)
    failed = [c.name for c in stack if not c.ok and not c.skipped]
    failed += [c.provider.stage for c in checks if not c.ok]
    skipped = sum(c.skipped for c in stack)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": not failed and not skipped,
                    "checks": [check.as_dict() for check in stack],
                    "mode": settings.mode,
                    "stages": [
                        {**check.provider.__dict__, "ok": check.ok, "detail": check.detail}
                        for check in checks
                    ],
                }
            )
        )
    else:
        if stack:
            _print_stack(stack)
        table = Table(title=f"model providers (CHORDLINE_PROVIDERS={settings.mode})")
        for column in ("stage", "provider", "model", "endpoint", "answers", "detail"):
            table.add_column(column)
        for check in checks:
            row = check.provider
            answers = f"yes ({check.elapsed_ms:.0f} ms)" if check.ok else "[red]no[/]"
            table.add_row(row.stage, row.provider, row.model, row.endpoint, answers, check.detail)
        console.print(table)
    if failed:
        not_run = f" ({skipped} not checked)" if skipped else ""
        err.print(
            f"[bold red]error:[/] doctor: {escape(', '.join(failed))} failed{not_run}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _parse_day(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(name, f"{value!r} is not an ISO date or date-time") from None


def usage(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")],
    since: Annotated[str | None, typer.Option(help="From this ISO date(-time), included.")] = None,
    until: Annotated[str | None, typer.Option(help="To this ISO date(-time), excluded.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Sum a tenant's model usage per stage: calls, tokens in and out, search units."""
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.db.usage import COUNTERS, tenant_usage

    window = {"since": _parse_day("--since", since), "until": _parse_day("--until", until)}
    with needed_services(redis=False), session_scope() as session:
        require_tenant(session, tenant)
        summed = tenant_usage(session, tenant, **window)
    rows = [*summed.stages.values(), summed.total]
    if as_json:
        print(
            json.dumps(
                {"tenant": tenant, "turns": summed.turns, "stages": [r.__dict__ for r in rows]}
            )
        )
        return
    table = Table(title=f"usage of {tenant} ({counted(summed.turns, 'turn')})")
    for column in ("stage", *COUNTERS):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in rows:
        table.add_row(row.stage, *(f"{getattr(row, name):,}" for name in COUNTERS))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command(rich_help_panel=INSPECT)(doctor)
    app.command(rich_help_panel=INSPECT)(usage)
