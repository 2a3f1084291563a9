"""`chordline turn ...`: send a turn (`turn MESSAGE` is `turn send MESSAGE`) and look one up."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from shared.config import get_settings
from shared.errors import InvalidInput
from shared.tools.cli.common import CommandGroup, TenantOpt, console, needed_services, turn_workers
from shared.validation import check_message, check_slug

if TYPE_CHECKING:
    from shared.turn_summary import TurnSummary

STDIN = "-"


class TurnGroup(CommandGroup):
    """A first word that is not one of the subcommands is the message of `send`."""

    order = ("send", "show")

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] != "--help":
            args = ["send", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=TurnGroup,
    help="Send a turn (`chordline turn MESSAGE`) or show one (`chordline turn show ID`).",
    no_args_is_help=True,
)


def _read_file(path: Path) -> str:
    if str(path) == STDIN:
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput("--file", f"{path} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput("--file", f"{path} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput("--file", f"{path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise InvalidInput("--file", f"{path} cannot be read ({exc.strerror})") from None


def message_from(argument: str | None, file: Path | None) -> str:
    """The customer's message: the argument, a file, or standard input (`-`), exactly one;
    a trailing line break, which a file or a pipe adds, is not part of it."""
    if argument is not None and file is not None:
        raise InvalidInput("--file", "give the message as an argument or with --file, not both")
    if argument is None and file is None:
        raise InvalidInput(
            "message", "give it as an argument, with --file PATH, or as - to read standard input"
        )
    if file is not None:
        text = _read_file(file)
    else:
        text = sys.stdin.read() if argument == STDIN else str(argument)
    if file is not None or argument == STDIN:
        text = text.removesuffix("\n").removesuffix("\r")
    return check_message(text, max_chars=get_settings().turn.max_message_chars)


@app.command("send")
def send(
    tenant: TenantOpt,
    conversation: Annotated[str, typer.Option("--conversation", "-c", help="Conversation id.")],
    message: Annotated[
        str | None,
        typer.Argument(help="The customer's message; - reads it from standard input."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read the message from this UTF-8 file (- for stdin)."),
    ] = None,
    stream: Annotated[bool, typer.Option(help="Print the reply's tokens as they arrive.")] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="The same key returns the same turn.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the turn to end.")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the turn as JSON.")] = False,
) -> None:
    """Send one turn and print how it was routed and answered."""
    from shared.client import enqueue_turn, get_turn, stream_turn, wait_for_turn

    text = message_from(message, file)  # refused before any service or worker starts
    check_slug("tenant", tenant)
    check_slug("conversation", conversation, max_chars=get_settings().turn.max_id_chars)
    with needed_services(), turn_workers():
        turn_id = enqueue_turn(tenant, conversation, text, idempotency_key=idempotency_key)
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
        table.add_row(label, Text(str(value)))  # the routing reason is model text: no markup
    console.print(table)
    if not stream:  # the reply is user-facing text: "[urgent]" stays, "[/x]" is not a tag
        console.print(view.agent_response or view.failure_reason or "", markup=False)


def _timings_text(summary: TurnSummary) -> str:
    reached = [f"{name} +{ms:,.0f} ms" for name, ms in summary.timings_ms.items() if ms is not None]
    return f"accepted {summary.accepted_at}" + (f"; {', '.join(reached)}" if reached else "")


@app.command("show")
def show(
    turn_id: Annotated[
        str, typer.Argument(help="The turn's id, as `turn` or enqueue_turn gave it.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print one turn: reply, agent, knowledge level, routing reason, memory written, status,
    timings."""
    from shared.db.session import session_scope
    from shared.turn_summary import summarise_turn
    from shared.validation import check_turn_id

    check_turn_id(turn_id, field="turn id")  # a malformed id starts nothing
    with needed_services(redis=False), session_scope() as session:
        summary = summarise_turn(session, turn_id)
    if as_json:
        print(json.dumps(summary.as_dict()))
        return
    memory = summary.memory_written
    table = Table(show_header=False)
    for label, value in (
        ("turn", summary.id),
        ("tenant", summary.tenant_id),
        ("conversation", f"{summary.conversation} #{summary.seq}"),
        (
            "status",
            summary.status + (f": {summary.failure_reason}" if summary.failure_reason else ""),
        ),
        ("agent", summary.agent or "-"),
        ("kb level", summary.kb_information_level or "-"),
        ("why", summary.routing_reason or "-"),
        ("memory written", json.dumps(memory, ensure_ascii=False) if memory else "-"),
        ("timings", _timings_text(summary)),
        ("carried", summary.carried_message or "-"),
        ("message", summary.message),
    ):
        table.add_row(label, Text(value))  # customer and model text: never markup
    console.print(table)
    console.print(summary.reply or "", markup=False, highlight=False, soft_wrap=True)
