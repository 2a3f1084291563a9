"""`chordline conversation show`: what chordline remembers of a conversation."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from shared.errors import InvalidInput
from shared.tools.cli.common import START, CommandGroup, TenantOpt, console, needed_services

app = typer.Typer(
    cls=CommandGroup, help="Conversations: memory, qualification and turns.", no_args_is_help=True
)

FACT_LABELS = {
    "company": "company",
    "sites": "sites",
    "people": "people",
    "current_tool": "using today",
    "budget": "budget",
    "timeline": "timeline",
    "needs": "needs",
    "decision_makers": "decides",
}
# What discovery asked the customer for (memory ``asked``), as the summary names it.
ASKED_LABELS = {**FACT_LABELS, "decision_makers": "who decides", "trial": "a trial"}


def conversation_record(tenant: str, conversation: str) -> dict[str, Any]:
    """The conversation's qualification, memory and turns, as plain data."""
    from sqlalchemy import select

    from shared.db.models import Conversation, Turn
    from shared.db.session import session_scope
    from shared.db.tenants import require_tenant

    with session_scope() as session:
        require_tenant(session, tenant)
        found = session.scalars(
            select(Conversation).where(
                Conversation.tenant_id == tenant, Conversation.external_id == conversation
            )
        ).first()
        if found is None:
            raise InvalidInput(
                "conversation", f"tenant {tenant!r} has no conversation {conversation!r}"
            )
        turns = session.scalars(
            select(Turn).where(Turn.conversation_id == found.id).order_by(Turn.seq)
        ).all()
        return {
            "tenant": tenant,
            "conversation": conversation,
            "qualification_status": found.qualification_status,
            "memory": dict(found.contextual_memory),
            "turns": [
                {
                    "seq": t.seq,
                    "id": str(t.id),
                    "status": t.status,
                    "phase": t.phase,
                    "agent": t.next_agent,
                    "kb_information_level": t.kb_information_level,
                    "message": t.message,
                }
                for t in turns
            ],
        }


def _print(record: dict[str, Any]) -> None:
    memory = record["memory"]
    facts = memory.get("facts") or {}
    summary = Table(show_header=False)
    summary.add_row("conversation", Text(f"{record['tenant']} / {record['conversation']}"))
    summary.add_row("qualification", Text(record["qualification_status"]))
    summary.add_row(
        "phase",
        Text(
            f"{memory.get('last_phase') or '-'} (furthest: {memory.get('furthest_phase') or '-'})"
        ),
    )
    for key, label in FACT_LABELS.items():
        value = facts.get(key, "-")
        summary.add_row(label, Text(", ".join(value) if isinstance(value, list) else str(value)))
    summary.add_row("topics", Text(", ".join(memory.get("topics") or []) or "-"))
    asked = [ASKED_LABELS.get(key, key) for key in memory.get("asked") or []]
    summary.add_row("asked for", Text(", ".join(asked) or "-"))
    console.print(summary)
    turns = Table("#", "phase", "agent", "kb level", "status", "message")
    for turn in record["turns"]:
        turns.add_row(
            str(turn["seq"]),
            turn["phase"] or "-",
            turn["agent"] or "-",
            turn["kb_information_level"] or "-",
            turn["status"],
            Text(turn["message"][:80]),
        )
    console.print(turns)


@app.command("show")
def conversation_show(
    conversation: Annotated[str, typer.Argument(help="Conversation id, as the turns gave it.")],
    tenant: TenantOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print a conversation's qualification, the facts and memory it keeps, and its turns."""
    from shared.config import get_settings
    from shared.validation import check_slug

    check_slug("tenant", tenant)
    check_slug("conversation", conversation, max_chars=get_settings().turn.max_id_chars)
    with needed_services(redis=False):
        record = conversation_record(tenant, conversation)
    if as_json:
        print(json.dumps(record, ensure_ascii=False))
    else:
        _print(record)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="conversation", rich_help_panel=START)
