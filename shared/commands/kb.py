"""`chordline kb ...`: a tenant's knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.commands.common import TenantOpt, console, err, needed_services
from shared.config import get_settings

app = typer.Typer(help="The knowledge base of a tenant.", no_args_is_help=True)


@app.command("ingest")
def kb_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .html).")],
    tenant: TenantOpt,
) -> None:
    """Ingest documents into a tenant's knowledge base."""
    from shared.kb.ingest import discover, ingest_paths
    from shared.providers.registry import get_providers

    with needed_services(redis=False):
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


@app.command("list")
def kb_list(tenant: TenantOpt) -> None:
    """List a tenant's documents."""
    from shared.db.session import session_scope
    from shared.kb.ingest import list_documents

    with needed_services(redis=False), session_scope() as session:
        docs = list_documents(session, tenant)
        table = Table("source", "title", "chunks", "updated")
        for doc in docs:
            table.add_row(
                doc.source, doc.title, str(doc.chunk_count), f"{doc.updated_at:%Y-%m-%d %H:%M}"
            )
    console.print(table)


@app.command("delete")
def kb_delete(
    source: Annotated[str, typer.Argument(help="The document's source, as `kb list` shows it.")],
    tenant: TenantOpt,
) -> None:
    """Delete one document and its chunks."""
    from shared.db.session import session_scope
    from shared.kb.ingest import delete_document

    with needed_services(redis=False), session_scope() as session:
        found = delete_document(session, tenant_id=tenant, source=source)
    if not found:
        err.print(f"no document {source!r} in tenant {tenant!r}")
        raise typer.Exit(1)
    console.print(f"deleted {source}")


@app.command("search")
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
    with needed_services(redis=False):
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
