"""`chordline doctor`: which model providers are active, and whether each answers."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
