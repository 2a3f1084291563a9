"""Counts as a person reads them: "1 document", "2 documents", "0 turns", "1,204 chunks"."""

from __future__ import annotations


def noun(count: int, singular: str, plural: str | None = None) -> str:
    """The noun that goes with ``count``: singular for exactly one, plural otherwise."""
    if count == 1:
        return singular
    if plural is not None:
        return plural
    return f"{singular}es" if singular.endswith(("s", "x", "ch", "sh")) else f"{singular}s"


def counted(count: int, singular: str, plural: str | None = None, *, grouped: bool = False) -> str:
    """``count`` and its noun; ``grouped`` writes thousands with commas (1,204)."""
    number = f"{count:,}" if grouped else str(count)
    return f"{number} {noun(count, singular, plural)}"
