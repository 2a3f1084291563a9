"""The demo: a scripted sales conversation with a fictional product's knowledge base.

It reaches all five agents and all three knowledge levels, prints one row per turn (agent,
level, latency, a waterfall of the stages), and checks that the orchestrator and the
researcher of every turn overlapped on different queues and worker processes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shared.client import enqueue_turn, get_turn, stream_turn
from shared.counts import counted
from shared.db.session import session_scope
from shared.db.spans import spans_of
from shared.db.tenants import ensure_tenant
from shared.db.turns import load_turn
from shared.kb.ingest import IngestReport, ingest_paths
from shared.providers.registry import get_providers
from shared.schemas import Agent, KbLevel
from shared.tools.reports.trace import waterfall_lines
from shared.trace import StageBar, overlap_ms, stage_bars

DEMO_TENANT = "demo"
DEMO_KB = Path(__file__).resolve().parent / "demo_kb"

SCRIPT = (
    "Hi! We run three warehouses and are looking at inventory tools to replace our spreadsheets.",
    "How much does the Growth plan cost, and how many users does it include?",
    "Does Halyard have a REST API and webhooks for stock changes?",
    "Can it connect to our on-prem SAP R/3 system over RFC?",
    "Our barcode scanners stopped syncing this morning and show error E-42.",
    "Is customer data encrypted, and do you support single sign-on with Okta?",
    "Could you write a short summary email I can send to our CFO?",
    "Thanks! Can I speak with someone from your team about an Enterprise contract?",
)


@dataclass(frozen=True)
class DemoTurn:
    turn_id: str
    message: str
    agent: str
    level: str
    latency_ms: float
    bars: list[StageBar]
    reply: str


def prepare_tenant() -> IngestReport:
    with session_scope() as session:
        ensure_tenant(session, tenant_id=DEMO_TENANT, name="Halyard (demo)")
    return ingest_paths([DEMO_KB], tenant_id=DEMO_TENANT, embedder=get_providers().embedder)


def play_turn(conversation: str, message: str, *, console: Console, timeout_s: float) -> DemoTurn:
    turn_id = enqueue_turn(DEMO_TENANT, conversation, message)
    console.print(f"[bold cyan]customer[/] {message}")
    console.print("[bold green]chordline[/] ", end="")
    for event in stream_turn(turn_id, timeout=timeout_s):
        if event.kind == "token":
            console.print(event.text, end="", soft_wrap=True, highlight=False, markup=False)
        elif event.kind == "restart":
            console.print("\n[dim](the agent restarted)[/] ", end="")
    console.print()
    view = get_turn(turn_id)
    with session_scope() as session:
        bars = stage_bars(load_turn(session, turn_id), spans_of(session, turn_id))
    return DemoTurn(
        turn_id,
        message,
        view.next_agent or "-",
        view.kb_information_level or "-",
        view.latency_ms or 0.0,
        bars,
        view.agent_response or "",
    )


def turn_table(turns: list[DemoTurn]) -> Table:
    table = Table(title="chordline demo: one row per turn", show_lines=False)
    for column in ("#", "agent", "kb level", "latency", "stages (. queue wait, █ running)"):
        table.add_column(column, no_wrap=True)
    longest = max((t.latency_ms for t in turns), default=1.0)
    for index, turn in enumerate(turns, 1):
        lines = waterfall_lines(turn.bars, total_ms=longest, width=32)
        waterfall = "\n".join(f"{label[:5]:<5} {bar}" for label, bar in lines)
        table.add_row(str(index), turn.agent, turn.level, f"{turn.latency_ms:,.0f} ms", waterfall)
    return table


def parallel_evidence(turn: DemoTurn) -> str | None:
    """None when the header stages overlapped on different queues and processes; else why not."""
    by_stage = {b.stage: b for b in turn.bars}
    orch, research = by_stage.get("orchestrator"), by_stage.get("researcher")
    if orch is None or research is None:
        return "missing orchestrator or researcher span"
    if overlap_ms(turn.bars) <= 0:
        return "orchestrator and researcher did not overlap"
    if orch.queue == research.queue:
        return f"both ran on queue {orch.queue}"
    if (orch.worker, orch.pid) == (research.worker, research.pid):
        return "both ran in the same worker process"
    return None


def coverage_gaps(turns: list[DemoTurn]) -> list[str]:
    agents = {t.agent for t in turns}
    levels = {t.level for t in turns}
    gaps = [f"agent {a.value} never answered" for a in Agent if a.value not in agents]
    gaps += [f"kb level {lvl.value} never seen" for lvl in KbLevel if lvl.value not in levels]
    return gaps


def play_demo(*, console: Console, timeout_s: float = 60.0) -> list[DemoTurn]:
    """Prepare the demo tenant and play the scripted conversation."""
    report = prepare_tenant()
    console.print(
        f"knowledge base: {counted(report.documents, 'document')} ({report.added} added, "
        f"{report.replaced} replaced, {report.unchanged} unchanged), "
        f"{counted(report.chunks, 'new chunk')}"
    )
    conversation = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    return [
        play_turn(conversation, message, console=console, timeout_s=timeout_s) for message in SCRIPT
    ]


def run_demo(*, console: Console, timeout_s: float = 60.0) -> int:
    turns = play_demo(console=console, timeout_s=timeout_s)
    console.print(turn_table(turns))
    problems = coverage_gaps(turns)
    for index, turn in enumerate(turns, 1):
        why = parallel_evidence(turn)
        if why:
            problems.append(f"turn {index}: {why}")
        else:
            by_stage = {b.stage: b for b in turn.bars}
            o, r = by_stage["orchestrator"], by_stage["researcher"]
            console.print(
                f"turn {index}: orchestrator ({o.queue}, pid {o.pid}) and researcher "
                f"({r.queue}, pid {r.pid}) overlapped {overlap_ms(turn.bars):.0f} ms"
            )
    console.print(
        f"the conversation stays in the database under tenant {DEMO_TENANT!r}; "
        f"try `chordline trace {turns[0].turn_id}`"
    )
    for problem in problems:
        console.print(f"[bold red]problem:[/] {problem}")
    return 1 if problems else 0
