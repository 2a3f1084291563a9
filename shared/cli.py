"""The `chordline` command."""

from __future__ import annotations

import contextlib
import json
import logging.config
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.config import get_settings
from shared.errors import ChordlineError
from shared.logs import logging_config

app = typer.Typer(
    help="chordline: each conversation turn as a distributed Celery workflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
kb_app = typer.Typer(help="The knowledge base of a tenant.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants and their settings.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(tenant_app, name="tenant")

console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)

TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]


def _setup_logging() -> None:
    settings = get_settings()
    logging.config.dictConfig(logging_config(level="WARNING", fmt=settings.log_format))


@contextlib.contextmanager
def _services(*, redis: bool = True) -> Iterator[None]:
    from shared.runtime import migrate, services

    with services(redis=redis):
        migrate()
        yield


@contextlib.contextmanager
def _turn_workers(log_dir: Path | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """Use the workers that already run (e.g. `chordline up`); otherwise run our own."""
    from shared.procfile import TURN_PROCESSES, running_workers, workers_answering

    if not env and workers_answering(TURN_PROCESSES):
        yield
        return
    with running_workers(
        TURN_PROCESSES, env_overrides=env, log_dir=log_dir or get_settings().data_dir / "logs"
    ):
        yield


def main() -> None:
    _setup_logging()
    try:
        app()
    except ChordlineError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest revision."""
    with _services(redis=False):
        console.print("schema is at the latest revision")


@app.command()
def demo(
    latency: Annotated[
        str,
        typer.Option(
            help="'simulated' (the field report's stage times, "
            "halved) or 'none' (offline providers at full speed)"
        ),
    ] = "simulated",
) -> None:
    """Set up the demo tenant, play a scripted sales conversation, print what each turn did."""
    from shared.demo import run_demo

    env = (
        {"CHORDLINE_PROVIDERS": "simulated", "CHORDLINE_SIMULATED_LATENCY_SCALE": "0.5"}
        if latency == "simulated"
        else {"CHORDLINE_PROVIDERS": "offline"}
    )
    with _services(), _turn_workers(env=env):
        code = run_demo(console=console)
    raise typer.Exit(code)


@app.command()
def turn(
    message: Annotated[str, typer.Argument(help="The customer's message.")],
    tenant: TenantOpt,
    conversation: Annotated[str, typer.Option("--conversation", "-c", help="Conversation id.")],
    stream: Annotated[bool, typer.Option(help="Print the reply's tokens as they arrive.")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="The same key returns the same turn.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the turn to end.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the turn as JSON.")] = False,
) -> None:
    """Send one turn and print how it was routed and answered."""
    from shared.client import enqueue_turn, get_turn, stream_turn, wait_for_turn

    with _services(), _turn_workers():
        turn_id = enqueue_turn(tenant, conversation, message, idempotency_key=idempotency_key)
        if stream:
            for event in stream_turn(turn_id, timeout=timeout):
                if event.kind == "token":
                    console.print(event.text, end="", markup=False, highlight=False)
            console.print()
        view = wait_for_turn(turn_id, timeout=timeout) if not stream else get_turn(turn_id)
    if as_json:
        console.print_json(json.dumps({k: v for k, v in view.__dict__.items()}, default=str))
        return
    table = Table(show_header=False)
    for label, value in (
        ("turn", view.id),
        ("status", view.status),
        ("phase", view.phase),
        ("proposed", view.proposed_agent),
        ("kb level", view.kb_information_level),
        ("agent", view.next_agent),
        ("why", view.routing_reason),
        ("latency", f"{view.latency_ms:,.0f} ms" if view.latency_ms else "-"),
    ):
        table.add_row(label, str(value))
    console.print(table)
    if not stream:
        console.print(view.agent_response or view.failure_reason or "")


# --------------------------------------------------------------------------- tenants


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    from shared.errors import InvalidInput

    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidInput("--set", f"{pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


@tenant_app.command("create")
def tenant_create(
    tenant: Annotated[str, typer.Argument(help="Tenant id.")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, e.g. topology=sequential")
    ] = None,
) -> None:
    """Create a tenant (or leave an existing one as it is)."""
    from shared.db.session import session_scope
    from shared.db.tenants import ensure_tenant, update_tenant_settings

    with _services(redis=False), session_scope() as session:
        settings = ensure_tenant(session, tenant_id=tenant, name=name)
        if set_:
            settings = update_tenant_settings(session, tenant, _parse_overrides(set_))
    console.print_json(settings.model_dump_json())


@tenant_app.command("set")
def tenant_set(
    tenant: Annotated[str, typer.Argument(help="Tenant id.")],
    pairs: Annotated[list[str], typer.Argument(help="key=value, e.g. thresholds.accurate=0.7")],
) -> None:
    """Change a tenant's settings."""
    from shared.db.session import session_scope
    from shared.db.tenants import update_tenant_settings

    with _services(redis=False), session_scope() as session:
        settings = update_tenant_settings(session, tenant, _parse_overrides(pairs))
    console.print_json(settings.model_dump_json())


@tenant_app.command("show")
def tenant_show(tenant: Annotated[str, typer.Argument(help="Tenant id.")]) -> None:
    """Print a tenant's effective settings."""
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant

    with _services(redis=False), session_scope() as session:
        console.print_json(require_tenant(session, tenant).model_dump_json())


# --------------------------------------------------------------------------- knowledge base


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .html).")],
    tenant: TenantOpt,
) -> None:
    """Ingest documents into a tenant's knowledge base."""
    from shared.kb.ingest import discover, ingest_paths
    from shared.providers.registry import get_providers

    with _services(redis=False):
        sources, _ = discover(paths)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("ingesting", total=len(sources))
            report = ingest_paths(
                paths,
                tenant_id=tenant,
                embedder=get_providers().embedder,
                on_progress=lambda source, outcome: progress.advance(task),
            )
    for rejected in report.rejected:
        err.print(f"[yellow]skipped[/] {rejected.source}: {rejected.reason}")
    console.print(
        f"{report.documents} documents ({report.added} added, {report.replaced} replaced, "
        f"{report.unchanged} unchanged), {report.chunks} chunks, {len(report.rejected)} "
        f"rejected, in {report.seconds:.2f} s"
    )


@kb_app.command("list")
def kb_list(tenant: TenantOpt) -> None:
    """List a tenant's documents."""
    from shared.db.session import session_scope
    from shared.kb.ingest import list_documents

    with _services(redis=False), session_scope() as session:
        docs = list_documents(session, tenant)
        table = Table("source", "title", "chunks", "updated")
        for doc in docs:
            table.add_row(
                doc.source, doc.title, str(doc.chunk_count), f"{doc.updated_at:%Y-%m-%d %H:%M}"
            )
    console.print(table)


@kb_app.command("delete")
def kb_delete(
    source: Annotated[str, typer.Argument(help="The document's source, as `kb list` shows it.")],
    tenant: TenantOpt,
) -> None:
    """Delete one document and its chunks."""
    from shared.db.session import session_scope
    from shared.kb.ingest import delete_document

    with _services(redis=False), session_scope() as session:
        found = delete_document(session, tenant_id=tenant, source=source)
    if not found:
        err.print(f"no document {source!r} in tenant {tenant!r}")
        raise typer.Exit(1)
    console.print(f"deleted {source}")


@kb_app.command("search")
def kb_search(
    question: Annotated[str, typer.Argument(help="The question.")], tenant: TenantOpt
) -> None:
    """Search a tenant's knowledge base: hits, reranked scores and the knowledge level."""
    import time

    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.errors import InvalidInput
    from shared.providers.base import Usage
    from shared.turn.researcher import research_question

    limit = get_settings().kb.max_query_chars
    if not question.strip():
        raise InvalidInput("question", "must not be empty")
    if len(question) > limit:
        raise InvalidInput("question", f"is {len(question)} characters; the limit is {limit}")
    with _services(redis=False):
        with session_scope() as session:
            settings = require_tenant(session, tenant)
        result = research_question(
            tenant_id=tenant,
            question=question,
            settings=settings,
            usage=Usage(),
            deadline=time.time() + 30,
        )
    table = Table("#", "score", "document", "text")
    for index, hit in enumerate(result.hits, 1):
        table.add_row(str(index), f"{hit.score:.3f}", hit.title, hit.text[:160].replace("\n", " "))
    console.print(table)
    console.print(
        f"kb_information_level: [bold]{result.kb_information_level.value}[/] "
        f"(accurate >= {settings.thresholds.accurate}, partial >= {settings.thresholds.partial})"
    )


# --------------------------------------------------------------------------- benchmark


@app.command()
def bench(
    rate: Annotated[float, typer.Option(help="Turns per second (Poisson arrivals).")] = 25.0,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per topology.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the arrival process.")] = 7,
) -> None:
    """Open-loop benchmark of both topologies with simulated stage latencies."""
    from shared.bench import print_bench_table, run_bench

    with _services():
        result = run_bench(rate=rate, duration_s=duration, seed=seed, progress=err)
    if as_json:
        print(json.dumps(result))
    else:
        print_bench_table(result, console)


if __name__ == "__main__":  # pragma: no cover
    main()
