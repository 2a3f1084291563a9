"""What every command shares: consoles, help panels, and the services and workers a command
needs."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from shared.config import get_settings

if TYPE_CHECKING:
    from shared.tools.stack.embedded import EmbeddedServices

console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)

TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]

# The top-level help groups commands by what a person does first.
START = "Start here"
INSPECT = "Look into turns"
OPERATE = "Operate"
BENCHMARKS = "Benchmarks"


def reflowed(help_text: str | None) -> str | None:
    """Help text with each paragraph on one line, so the terminal wraps it at its own width
    (rich keeps a docstring's line breaks, which break lines early on a narrow terminal)."""
    if not help_text:
        return help_text
    body, marker, hidden = inspect.cleandoc(help_text).partition("\f")
    paragraphs = [
        paragraph if paragraph.startswith("\b") else " ".join(paragraph.split())
        for paragraph in body.split("\n\n")
    ]
    return "\n\n".join(paragraphs) + marker + hidden


class CommandGroup(TyperGroup):
    """A group whose commands list in a set order (the rest after them, as registered) and
    whose help paragraphs wrap at the terminal's width."""

    order: tuple[str, ...] = ()

    # Any: the Context and Command classes are click's or, in recent Typer, its own copy.
    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: index for index, name in enumerate(self.order)}
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            command.help = reflowed(command.help)
        return command


@contextlib.contextmanager
def needed_services(*, redis: bool = True) -> Iterator[EmbeddedServices]:
    """Postgres (migrated) and, unless told otherwise, Redis: configured or embedded (the
    embedded ones are those it yields)."""
    from shared.db.migrations import migrate
    from shared.tools.stack.services import services

    with services(redis=redis) as embedded:
        migrate()
        yield embedded


@contextlib.contextmanager
def turn_workers(log_dir: Path | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """Use the workers that already run (e.g. `chordline up`); otherwise run our own."""
    from shared.tools.stack.procfile import TURN_PROCESSES, running_workers, workers_answering

    if not env and workers_answering(TURN_PROCESSES):
        yield
        return
    with running_workers(
        TURN_PROCESSES, env_overrides=env, log_dir=log_dir or get_settings().data_dir / "logs"
    ):
        yield
