"""What a run found: routing and knowledge-level shifts, examples, and what it cost.

Everything is aggregated in Postgres (GROUP BY over the run's result rows), so a report on
a run of a million turns reads counts, not rows. Only the CSV export walks every row, and
it streams them.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy import BigInteger, func, or_, select, text
from sqlalchemy.orm import Session

from shared.counts import counted, noun
from shared.db.models import Conversation, Turn
from shared.rescoring.models import RescoreResult
from shared.rescoring.runs import load_run, run_progress

NONE = "none"  # the label of a missing value (a turn that failed before it was routed)
CSV_COLUMNS = (
    "turn_id",
    "conversation",
    "seq",
    "created_at",
    "message",
    "old_agent",
    "new_agent",
    "routing_changed",
    "old_level",
    "new_level",
    "old_top_score",
    "new_top_score",
    "old_proposed_agent",
    "new_proposed_agent",
    "new_routing_reason",
    "note",
    "calls",
    "tokens_in",
    "tokens_out",
)


@dataclass(frozen=True)
class RunReport:
    run: dict[str, Any]
    turns: int
    changed: int
    agent_matrix: dict[str, dict[str, int]]
    level_shift: dict[str, dict[str, int]]
    examples: list[dict[str, Any]]
    cost: dict[str, Any]

    @property
    def changed_share(self) -> float:
        return self.changed / self.turns if self.turns else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "turns": self.turns,
            "changed": self.changed,
            "changed_share": round(self.changed_share, 4),
            "agent_matrix": self.agent_matrix,
            "level_shift": self.level_shift,
            "examples": self.examples,
            "cost": self.cost,
        }


def _matrix(session: Session, run_id: uuid.UUID, old: Any, new: Any) -> dict[str, dict[str, int]]:
    rows = session.execute(
        select(old, new, func.count())
        .where(RescoreResult.run_id == run_id, RescoreResult.scored_at.is_not(None))
        .group_by(old, new)
        .order_by(old, new)
    ).all()
    matrix: dict[str, dict[str, int]] = {}
    for before, after, count in rows:
        matrix.setdefault(before or NONE, {})[after or NONE] = int(count)
    return matrix


def _cost(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    rows = session.execute(
        text("""
        SELECT stage.key AS stage,
               sum((stage.value->>'calls')::bigint) AS calls,
               sum((stage.value->>'tokens_in')::bigint) AS tokens_in,
               sum((stage.value->>'tokens_out')::bigint) AS tokens_out
        FROM rescore_results r, jsonb_each(r.usage) AS stage
        WHERE r.run_id = :run AND r.scored_at IS NOT NULL
        GROUP BY stage.key ORDER BY stage.key
        """),
        {"run": run_id},
    ).all()
    by_stage = {
        row.stage: {
            "calls": int(row.calls or 0),
            "tokens_in": int(row.tokens_in or 0),
            "tokens_out": int(row.tokens_out or 0),
        }
        for row in rows
    }
    totals = {k: sum(s[k] for s in by_stage.values()) for k in ("calls", "tokens_in", "tokens_out")}
    return {**totals, "by_stage": by_stage}


def _examples(session: Session, run_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    """Turns whose routing changed first, then those whose knowledge level alone did."""
    level_changed = RescoreResult.old_level.is_distinct_from(RescoreResult.new_level)
    rows = session.execute(
        select(RescoreResult, Turn.message, Turn.seq, Conversation.external_id)
        .outerjoin(Turn, Turn.id == RescoreResult.turn_id)
        .outerjoin(Conversation, Conversation.id == Turn.conversation_id)
        .where(
            RescoreResult.run_id == run_id,
            RescoreResult.scored_at.is_not(None),
            or_(RescoreResult.routing_changed.is_(True), level_changed),
        )
        .order_by(RescoreResult.routing_changed.desc(), RescoreResult.position)
        .limit(limit)
    ).all()
    return [
        {
            "turn_id": str(r.turn_id),
            "conversation": conversation,
            "seq": seq,
            "message": (message or "")[:300],
            "old_agent": r.old_agent,
            "new_agent": r.new_agent,
            "old_level": r.old_level,
            "new_level": r.new_level,
            "old_top_score": r.old_top_score,
            "new_top_score": r.new_top_score,
            "new_top_hit": (r.new_hits or [{}])[0].get("title") if r.new_hits else None,
            "old_routing_reason": r.old_routing_reason,
            "new_routing_reason": r.new_routing_reason,
        }
        for r, message, seq, conversation in rows
    ]


def _run_summary(session: Session, run_id: str) -> dict[str, Any]:
    run = load_run(session, run_id)
    progress = run_progress(session, run_id)
    now = datetime.now(UTC)
    return {
        "id": str(run.id),
        "tenant": run.tenant_id,
        "status": run.status,
        "total_turns": run.total_turns,
        "scored_turns": progress.done,
        "stages": run.stages,
        "overrides": run.overrides,
        "since": run.since.isoformat() if run.since else None,
        "until": run.until.isoformat() if run.until else None,
        "conversation": run.conversation,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "turns_per_minute": round(progress.turns_per_minute(now), 1),
    }


def build_report(session: Session, run_id: str, *, examples: int = 10) -> RunReport:
    summary = _run_summary(session, run_id)
    rid = uuid.UUID(summary["id"])
    scored = RescoreResult.run_id == rid, RescoreResult.scored_at.is_not(None)
    changed = session.scalar(
        select(func.count()).where(*scored, RescoreResult.routing_changed.is_(True))
    )
    return RunReport(
        run=summary,
        turns=summary["scored_turns"],
        changed=int(changed or 0),
        agent_matrix=_matrix(session, rid, RescoreResult.old_agent, RescoreResult.new_agent),
        level_shift=_matrix(session, rid, RescoreResult.old_level, RescoreResult.new_level),
        examples=_examples(session, rid, examples),
        cost=_cost(session, rid),
    )


# --------------------------------------------------------------------------- CSV


def _csv_rows(session: Session, run_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    usage = RescoreResult.usage

    def usage_sum(key: str) -> Any:
        def of(stage: str) -> Any:
            return func.coalesce(usage[stage][key].astext.cast(BigInteger), 0)

        return of("orchestrator") + of("researcher")

    stmt = (
        select(
            RescoreResult,
            Conversation.external_id,
            Turn.seq,
            Turn.created_at,
            Turn.message,
            usage_sum("calls").label("calls"),
            usage_sum("tokens_in").label("tokens_in"),
            usage_sum("tokens_out").label("tokens_out"),
        )
        .outerjoin(Turn, Turn.id == RescoreResult.turn_id)
        .outerjoin(Conversation, Conversation.id == Turn.conversation_id)
        .where(RescoreResult.run_id == run_id, RescoreResult.scored_at.is_not(None))
        .order_by(RescoreResult.position)
        .execution_options(yield_per=1000)
    )
    for row in session.execute(stmt):
        r = row.RescoreResult
        yield {
            "turn_id": str(r.turn_id),
            "conversation": row.external_id,
            "seq": row.seq,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "message": row.message,
            "old_agent": r.old_agent,
            "new_agent": r.new_agent,
            "routing_changed": r.routing_changed,
            "old_level": r.old_level,
            "new_level": r.new_level,
            "old_top_score": r.old_top_score,
            "new_top_score": r.new_top_score,
            "old_proposed_agent": r.old_proposed_agent,
            "new_proposed_agent": r.new_proposed_agent,
            "new_routing_reason": r.new_routing_reason,
            "note": r.note,
            "calls": row.calls,
            "tokens_in": row.tokens_in,
            "tokens_out": row.tokens_out,
        }


def write_csv(session: Session, run_id: str, out: TextIO) -> int:
    """One row per scored turn; returns the rows written."""
    rid = uuid.UUID(str(load_run(session, run_id).id))
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    count = 0
    for row in _csv_rows(session, rid):
        writer.writerow(row)
        count += 1
    return count


def export_csv(session: Session, run_id: str, path: Path) -> int:
    with path.open("w", newline="", encoding="utf-8") as out:
        return write_csv(session, run_id, out)


# --------------------------------------------------------------------------- printing


def _matrix_table(title: str, matrix: dict[str, dict[str, int]]) -> Table:
    columns = sorted({new for row in matrix.values() for new in row})
    table = Table(title=title)
    table.add_column("was \\ now")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for old in sorted(matrix):
        cells = []
        for new in columns:
            count = matrix[old].get(new, 0)
            cells.append(f"[bold]{count}[/]" if old == new else (str(count) if count else "."))
        table.add_row(escape(old), *cells)
    return table


def print_report(report: RunReport, console: Console) -> None:
    """The report for a terminal. What customers, agents and users wrote (messages, reasons,
    conversation ids, overrides) is printed as plain text, never read as Rich markup."""
    run = report.run
    console.print(
        Text(
            f"run {run['id']} of tenant {run['tenant']!r}: {run['status']}, "
            f"{report.turns:,} of {counted(run['total_turns'], 'turn', grouped=True)} scored "
            f"(stages {','.join(run['stages'])}; overrides {run['overrides'] or 'none'})"
        )
    )
    console.print(
        f"routing changed for [bold]{report.changed:,}[/] {noun(report.changed, 'turn')} "
        f"({report.changed_share:.1%} of those scored)"
    )
    console.print(_matrix_table("agent: was -> would be now", report.agent_matrix))
    console.print(_matrix_table("kb level: was -> would be now", report.level_shift))
    if report.examples:
        table = Table(title="examples of changed turns")
        table.add_column("conversation#seq", overflow="fold")
        for column in ("message", "agent", "kb level", "why now"):
            table.add_column(column)
        for ex in report.examples:
            table.add_row(
                Text(f"{ex['conversation']}#{ex['seq']}"),
                Text(ex["message"][:80]),
                Text(f"{ex['old_agent'] or NONE} -> {ex['new_agent']}"),
                Text(f"{ex['old_level'] or NONE} -> {ex['new_level'] or NONE}"),
                Text((ex["new_routing_reason"] or "")[:90]),
            )
        console.print(table)
    cost = report.cost
    stages = ", ".join(
        f"{stage} {counted(c['calls'], 'call', grouped=True)} / {c['tokens_in']:,} in / "
        f"{c['tokens_out']:,} out"
        for stage, c in cost["by_stage"].items()
    )
    console.print(
        f"cost: {counted(cost['calls'], 'call', grouped=True)}, "
        f"{counted(cost['tokens_in'], 'token', grouped=True)} in, "
        f"{counted(cost['tokens_out'], 'token', grouped=True)} out"
        + (f" ({stages})" if stages else "")
    )
