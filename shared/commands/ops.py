"""`chordline trace`, `critical-path`, `up`: operating a running chordline."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
