"""What every command shares: consoles, and the services and workers a command needs."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.config import get_settings

console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)

TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id.")]


@contextlib.contextmanager
def needed_services(*, redis: bool = True) -> Iterator[None]:
    """Postgres (migrated) and, unless told otherwise, Redis: configured or embedded."""
    from shared.runtime import migrate, services

    with services(redis=redis):
        migrate()
        yield


@contextlib.contextmanager
def turn_workers(log_dir: Path | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """Use the workers that already run (e.g. `chordline up`); otherwise run our own."""
    from shared.procfile import TURN_PROCESSES, running_workers, workers_answering

    if not env and workers_answering(TURN_PROCESSES):
        yield
        return
    with running_workers(
        TURN_PROCESSES, env_overrides=env, log_dir=log_dir or get_settings().data_dir / "logs"
    ):
        yield
