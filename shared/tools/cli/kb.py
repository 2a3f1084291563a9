"""`chordline kb ...`: a tenant's knowledge base."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.config import get_settings
from shared.counts import counted
from shared.tools.cli.common import CommandGroup, TenantOpt, console, err, needed_services

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.kb.documents import Discovery
    from shared.kb.ingest import IngestReport, Outcome
    from shared.schemas import TenantSettings

app = typer.Typer(cls=CommandGroup, help="The knowledge base of a tenant.", no_args_is_help=True)

MAX_LISTED = 20


class IngestMode(StrEnum):
    AUTO = "auto"
    INLINE = "inline"
    QUEUE = "queue"


@contextlib.contextmanager
def _services_for_ingest(mode: IngestMode) -> Iterator[bool]:
    """Postgres (migrated), and Redis unless inline; yields whether ingest workers answer."""
    from shared.db.migrations import migrate
    from shared.kb.jobs import ingest_workers_answer
    from shared.tools.stack.services import services

    with services(redis=mode is not IngestMode.INLINE) as embedded:
        migrate()
        fresh_broker = embedded.redis is not None and embedded.redis.started_here
        yield mode is not IngestMode.INLINE and not fresh_broker and ingest_workers_answer()


def _print_rejections(report: IngestReport) -> None:
    for rejected in report.rejected:
        err.print(f"[yellow]rejected[/] {escape(rejected.describe())}", soft_wrap=True)
    for failed in report.failed:
        err.print(f"[red]failed[/] {escape(failed.describe())}", soft_wrap=True)
    for skipped in report.skipped[:MAX_LISTED]:
        err.print(f"[dim]skipped {escape(skipped.describe())}[/]", soft_wrap=True)
    if len(report.skipped) > MAX_LISTED:
        err.print(f"[dim]... and {len(report.skipped) - MAX_LISTED} more skipped[/]")


def _ingest_with_progress(
    found: Discovery, *, tenant: str, queued: bool, report: IngestReport
) -> None:
    """Ingest what was found, on the ingest queue or inline, advancing a progress bar."""
    from shared.kb.ingest import ingest_sources
    from shared.kb.jobs import ingest_queued
    from shared.providers.registry import get_providers

    embedder = get_providers().embedder
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as progress:
        bar = progress.add_task(
            "ingesting on the ingest queue" if queued else "ingesting",
            total=len(found.sources),
        )

        def advance(source: str, outcome: Outcome) -> None:
            progress.advance(bar)

        if queued:
            ingest_queued(
                found.sources,
                tenant_id=tenant,
                embedding_model=embedder.model,
                report=report,
                on_progress=advance,
            )
        else:
            ingest_sources(
                found.sources,
                tenant_id=tenant,
                embedder=embedder,
                report=report,
                on_progress=advance,
            )


def _print_report(report: IngestReport) -> None:
    _print_rejections(report)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if report.failed:
        err.print(
            "the failed documents were not stored; run the same `kb ingest` again to retry "
            "them (stored documents are skipped)"
        )
    if report.pending:
        err.print(
            f"{counted(report.pending, 'document')} {'was' if report.pending == 1 else 'were'} "
            "still queued when no more progress came for "
            f"{get_settings().kb.queue_idle_timeout_s:.0f} s; `chordline kb list` shows them "
            "once the ingest workers store them"
        )


@app.command("ingest")
def kb_ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .html).")],
    tenant: TenantOpt,
    mode: Annotated[
        IngestMode,
        typer.Option(
            help="auto: one task per document on the ingest queue when an ingest worker "
            "answers, in this process otherwise; inline; queue (fails if no worker answers)."
        ),
    ] = IngestMode.AUTO,
) -> None:
    """Ingest documents into a tenant's knowledge base, with a progress bar and a summary."""
    import time

    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.errors import InvalidInput
    from shared.kb.documents import discover
    from shared.kb.ingest import IngestReport, knowledge_base_changed
    from shared.validation import check_slug

    check_slug("tenant", tenant)
    started = time.perf_counter()
    with _services_for_ingest(mode) as queue_available:
        if mode is IngestMode.QUEUE and not queue_available:
            raise InvalidInput(
                "--mode", "queue needs a running ingest worker (Procfile: ingest); none answered"
            )
        with session_scope() as session:
            require_tenant(session, tenant)
        found = discover(paths)
        report = IngestReport(rejected=found.rejected, skipped=found.skipped)
        _ingest_with_progress(found, tenant=tenant, queued=queue_available, report=report)
        if report.changed:
            knowledge_base_changed(tenant)
        report.seconds = time.perf_counter() - started
        _print_report(report)
        if report.changed:
            _recalibrate(tenant)
    if report.rejected or report.failed or report.pending:
        raise typer.Exit(1)


@app.command("list")
def kb_list(tenant: TenantOpt) -> None:
    """List a tenant's documents, with the embedding models that have vectors for them."""
    from shared.db.session import session_scope
    from shared.kb.ingest import embedded_models, list_documents

    with needed_services(redis=False), session_scope() as session:
        docs = list_documents(session, tenant)
        models = embedded_models(session, tenant)
        table = Table("source", "title", "chunks", "embedded by", "updated")
        for doc in docs:
            table.add_row(
                escape(doc.source),
                escape(doc.title),
                str(doc.chunk_count),
                escape(", ".join(models.get(doc.id, []))) or "-",
                f"{doc.updated_at:%Y-%m-%d %H:%M}",
            )
    console.print(table)
    chunks = sum(d.chunk_count for d in docs)
    console.print(f"{counted(len(docs), 'document')}, {counted(chunks, 'chunk')}")


@app.command("delete")
def kb_delete(
    source: Annotated[str, typer.Argument(help="The document's source, as `kb list` shows it.")],
    tenant: TenantOpt,
) -> None:
    """Delete one document, its chunks and their vectors."""
    from shared.db.session import session_scope
    from shared.kb.ingest import delete_document, knowledge_base_changed

    with needed_services(redis=False):
        with session_scope() as session:
            found = delete_document(session, tenant_id=tenant, source=source)
        if found:
            knowledge_base_changed(tenant)
            _recalibrate(tenant)
    if not found:
        err.print(f"no document {escape(repr(source))} in tenant {escape(repr(tenant))}")
        raise typer.Exit(1)
    console.print(f"deleted {escape(source)}")


@app.command("search")
def kb_search(
    question: Annotated[str, typer.Argument(help="The question.")],
    tenant: TenantOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Search a tenant's knowledge base: hits, reranked scores and the knowledge level."""
    import time

    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.kb.focus import question_focus
    from shared.kb.research import research_question, words_the_best_passage_lacks
    from shared.kb.search import check_question
    from shared.kb.stores import store_for
    from shared.providers.base import Usage
    from shared.providers.registry import get_providers
    from shared.schemas import KbLevel
    from shared.validation import check_slug

    check_slug("tenant", tenant)
    check_question(question, max_chars=get_settings().kb.max_query_chars)
    with needed_services(redis=False):
        with session_scope() as session:
            settings = require_tenant(session, tenant)
            stale = _stale_thresholds(session, tenant, settings)
        started = time.perf_counter()
        result = research_question(
            tenant_id=tenant,
            question=question,
            settings=settings,
            usage=Usage(),
            deadline=time.time() + 30,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        store = store_for(get_providers().embedder)
        lacking = words_the_best_passage_lacks(question, result.hits)
    if as_json:
        print(
            json.dumps(
                {
                    **result.model_dump(mode="json"),
                    "searched_as": question_focus(question),
                    "vector_store": store.table,
                    "calibration_warning": stale,
                    "words_not_found": lacking,
                }
            )
        )
        return
    table = Table("#", "score", "vector", "text", "document", "passage")
    for index, hit in enumerate(result.hits, 1):
        table.add_row(
            str(index),
            f"{hit.score:.3f}",
            str(hit.vector_rank or "-"),
            str(hit.text_rank or "-"),
            escape(hit.title),
            escape(hit.text[:160].replace("\n", " ")),
        )
    console.print(table)
    if (focus := question_focus(question)) != question:
        console.print(
            f"searched as {escape(repr(focus))}: a content request's framing or a problem's "
            "time frame is left out",
            highlight=False,
        )
    for part, top in result.parts:  # a question asking several things, graded per part
        console.print(f"part {escape(repr(part))}: top score {top:.3f}", highlight=False)
    if lacking and result.kb_information_level is not KbLevel.ACCURATE:
        console.print(
            f"not in the best passage: {escape(', '.join(lacking))} (the offline reranker "
            "matches words and words of the same meaning, not paraphrases)",
            highlight=False,
        )
    console.print(
        f"kb_information_level: [bold]{result.kb_information_level.value}[/] (top score "
        f"{max((h.score for h in result.hits), default=0.0):.3f}; accurate >= "
        f"{settings.thresholds.accurate}, partial >= {settings.thresholds.partial}); "
        f"{escape(store.model)} vectors, {elapsed_ms:.0f} ms",
        highlight=False,
    )
    _warn_stale(stale)


def _print_bench(result: dict[str, Any]) -> None:
    table = Table(
        "class",
        "tenants",
        "chunks",
        "search p50/p95/p99 ms",
        "vector p50/p99 ms",
        "recall@10",
        "ingest chunks/s",
    )
    for size_class in ("large", "medium", "small"):
        row = result[size_class]
        s, v = row["search_ms"], row["vector_search_ms"]
        table.add_row(
            size_class,
            str(row["tenants"]),
            str(row["chunks"]),
            f"{s['p50']} / {s['p95']} / {s['p99']}",
            f"{v['p50']} / {v['p99']}",
            f"{row['recall_at_10']:.3f}",
            f"{row['ingest_chunks_per_s']:.0f}",
        )
    console.print(table)
    overall = result["overall"]
    console.print(
        f"HNSW build {overall['build_s']} s; ingestion {overall['ingest_chunks_per_s']} chunks/s "
        f"(bulk), {overall['ingest_indexed_chunks_per_s']} chunks/s into the indexed table. "
        f"Data: {result['data']}."
    )


@app.command("bench")
def kb_bench(
    chunks: Annotated[int, typer.Option(min=100, help="Chunks to generate and load.")] = 100_000,
    queries: Annotated[int, typer.Option(min=10, help="Questions per size class.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the generated corpus.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Ingestion and tenant-filtered search on a generated corpus, in a scratch database."""
    from shared.tools.bench.kb import run_kb_bench

    with needed_services(redis=False):
        result = run_kb_bench(chunks=chunks, queries=queries, seed=seed, progress=err.print)
    if as_json:
        print(json.dumps(result))
    else:
        _print_bench(result)


CALIBRATION_TENANT = "kb-calibration"


def _calibration_settings(tenant: str) -> TenantSettings:
    """The tenant's settings; the default calibration tenant gets the demo documents."""
    from shared.db.session import session_scope
    from shared.db.tenants import ensure_tenant, require_tenant
    from shared.kb.ingest import ingest_paths
    from shared.providers.registry import get_providers
    from shared.tools.demo.conversation import DEMO_KB

    with session_scope() as session:
        if tenant == CALIBRATION_TENANT:
            ensure_tenant(session, tenant_id=tenant, name="threshold calibration")
        settings = require_tenant(session, tenant)
    if tenant == CALIBRATION_TENANT:
        ingest_paths([DEMO_KB], tenant_id=tenant, embedder=get_providers().embedder)
    return settings


def _accuracy_row(name: str, accuracy: dict[str, float], *cells: str) -> list[str]:
    levels = [f"{accuracy[level]:.2f}" for level in ("ACCURATE", "PARTIAL", "MISSING")]
    balanced = sum(accuracy.values()) / len(accuracy)
    return [name, *cells, *levels, f"{balanced:.3f}"]


def _print_calibration(report: dict[str, Any]) -> None:
    table = Table("thresholds", "accurate", "partial", "ACCURATE", "PARTIAL", "MISSING", "balanced")
    for name in ("fitted", "defaults"):
        row = report[name]
        thresholds = row["thresholds"]
        table.add_row(
            *_accuracy_row(
                name,
                row["per_class_accuracy"],
                str(thresholds["accurate"]),
                str(thresholds["partial"]),
            )
        )
    table.add_row(
        *_accuracy_row("5-fold CV", report["cross_validated_per_class_accuracy"], "-", "-")
    )
    console.print(table)
    console.print(f"questions per label: {report['questions']}")
    for miss in report["misclassified_by_defaults"]:
        console.print(
            f"[dim]{miss['label']:>8} -> {miss['predicted']:<8} {miss['top_score']:.3f} "
            f"{escape(miss['question'])}[/]",
            highlight=False,
        )


def _calibration_line(report: dict[str, Any]) -> str:
    fitted, used = report["fitted"], report["thresholds"]
    accuracy = ", ".join(f"{k} {v:.2f}" for k, v in fitted["per_class_accuracy"].items())
    counts = ", ".join(f"{v} {k}" for k, v in report["questions"].items())
    if report["pinned"]:
        return (
            f"thresholds pinned at accurate {used['accurate']}, partial {used['partial']} "
            f"(thresholds.pinned); calibration would set {fitted['accurate']} / "
            f"{fitted['partial']} ({accuracy} on {counts} derived questions)"
        )
    return (
        f"thresholds calibrated: accurate {used['accurate']}, partial {used['partial']} "
        f"({accuracy} on {counts} questions derived from the documents, in "
        f"{report['seconds']} s)"
    )


def _recalibrate(tenant: str) -> dict[str, Any] | None:
    """The tenant's own calibration after its knowledge base changed; one line about it."""
    from shared.errors import ChordlineError
    from shared.kb.selfcalibration import calibrate_tenant

    try:
        report = calibrate_tenant(tenant)
    except ChordlineError as exc:  # too few chunks, or the models failing: the ingest stands
        err.print(f"thresholds left as they were: {escape(str(exc))}", soft_wrap=True)
        return None
    console.print(_calibration_line(report), highlight=False, soft_wrap=True)
    return report


@app.command("calibrate")
def kb_calibrate(
    questions: Annotated[
        Path | None,
        typer.Option(help="Labelled questions, one JSON object a line (question, level)."),
    ] = None,
    tenant: Annotated[
        str,
        typer.Option(
            "--tenant",
            "-t",
            help="Tenant to calibrate on questions derived from its own documents (or, with "
            "--questions, whose knowledge base answers them); by default the demo KB and "
            "the labelled demo questions.",
        ),
    ] = CALIBRATION_TENANT,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Set a tenant's knowledge-level thresholds from questions derived from its documents,
    or fit them on labelled questions and report accuracy per class."""
    from shared.kb.calibration import (
        DEFAULT_QUESTIONS,
        calibration_report,
        load_questions,
        score_questions,
    )
    from shared.validation import check_slug

    check_slug("tenant", tenant)
    if questions is None and tenant != CALIBRATION_TENANT:
        with needed_services(redis=False):
            from shared.kb.ingest import knowledge_base_changed
            from shared.kb.selfcalibration import calibrate_tenant

            knowledge_base_changed(tenant)  # acronym aliases too (documents stored before)
            report = calibrate_tenant(tenant)
        if as_json:
            print(json.dumps(report))
        else:
            console.print(_calibration_line(report), highlight=False, soft_wrap=True)
        return
    labelled = load_questions(questions or DEFAULT_QUESTIONS)
    with needed_services(redis=False):
        settings = _calibration_settings(tenant)
        scored = score_questions(labelled, tenant_id=tenant, settings=settings)
    report = calibration_report(scored)
    if as_json:
        print(json.dumps(report))
    else:
        _print_calibration(report)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_evaluation(report: dict[str, Any], thresholds: dict[str, float]) -> None:
    levels = list(report["confusion"])
    matrix = Table("labelled \\ predicted", *levels, "accuracy", title="knowledge levels")
    for level in levels:
        row = report["confusion"][level]
        matrix.add_row(
            level, *(str(row[p]) for p in levels), _figure(report["per_class_accuracy"][level])
        )
    console.print(matrix)
    console.print(
        f"balanced accuracy {_figure(report['balanced_accuracy'])}, ACCURATE recall "
        f"{_figure(report['accurate_recall'])} (accurate >= {thresholds['accurate']}, "
        f"partial >= {thresholds['partial']})",
        highlight=False,
    )
    agents = list(report["routing"])
    routing = Table("chosen by a person \\ routed", *agents, title="routing")
    for agent in agents:
        row = report["routing"][agent]
        if sum(row.values()):
            routing.add_row(agent, *(str(row[a]) for a in agents))
    console.print(routing)
    console.print(
        f"routing accuracy {_figure(report['routing_accuracy'])}; MISSING sent to "
        f"technical_consultant or support {_figure(report['missing_to_knowledge_bound'])}; "
        f"described problems routed to support {_figure(report['problems_to_support'])}",
        highlight=False,
    )
    console.print(
        "orchestrator, where a person chose a specialist: proposed that agent "
        f"{_figure(report['proposal_accuracy'])}, mean confidence "
        f"{_figure(report['mean_confidence_right'])} when right, "
        f"{_figure(report['mean_confidence_wrong'])} when not",
        highlight=False,
    )
    for wrong in report["wrong"]:
        console.print(
            f"[dim]{wrong['level']:>8} -> {wrong['predicted_level']:<8} "
            f"{wrong['top_score']:.3f}  {wrong['agent'] or '-'} -> {wrong['routed_agent']} "
            f"({wrong['intent']} {wrong['confidence']:.2f})  {escape(wrong['question'])}"
            f"{_searched_as(wrong['question'], wrong['searched_as'])}"
            f"{_not_found(wrong)}[/]",
            highlight=False,
        )


def _searched_as(question: str, focus: str) -> str:
    """What the researcher searched, when it left framing out of the question."""
    return "" if focus == question else f" (searched as {escape(repr(focus))})"


def _not_found(wrong: dict[str, Any]) -> str:
    """The question's words the best passage did not hold, when it came back too low."""
    from shared.schemas import KbLevel

    lacking = wrong.get("words_not_found")
    below = KbLevel(wrong["predicted_level"]) is not KbLevel.ACCURATE
    return f" (not found: {escape(', '.join(lacking))})" if lacking and below else ""


@app.command("eval")
def kb_eval(
    questions: Annotated[
        Path,
        typer.Option(
            help="Labelled questions, one JSON object a line: question, level and the agent "
            "a person would choose."
        ),
    ],
    tenant: TenantOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure a tenant's knowledge levels and routing on labelled questions: confusion
    matrix, per-class and balanced accuracy, and the routing table."""
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant
    from shared.kb.calibration import load_questions
    from shared.tools.reports.kb_eval import evaluate_question, evaluation_report
    from shared.validation import check_slug

    check_slug("tenant", tenant)
    labelled = load_questions(questions)
    with needed_services(redis=False):
        with session_scope() as session:
            settings = require_tenant(session, tenant)
            stale = _stale_thresholds(session, tenant, settings)
        results = [
            evaluate_question(item, tenant_id=tenant, settings=settings) for item in labelled
        ]
    report = evaluation_report(results)
    thresholds = settings.thresholds.model_dump()
    if as_json:
        print(json.dumps({**report, "thresholds": thresholds, "calibration_warning": stale}))
    else:
        _print_evaluation(report, thresholds)
        _warn_stale(stale)


def _stale_thresholds(session: Session, tenant: str, settings: TenantSettings) -> str | None:
    """Why the tenant's thresholds may not fit today's scorer, or None."""
    from shared.kb.selfcalibration import stale_calibration, stored_calibration

    return stale_calibration(tenant, stored_calibration(session, tenant), settings)


def _warn_stale(note: str | None) -> None:
    if note:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
