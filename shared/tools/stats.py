"""Percentiles of measured samples: one definition for every report (linear interpolation
between the closest ranks, numpy's default, which is also ``statistics.quantiles`` with
``method="inclusive"``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REPORTED = (50, 95, 99)


def percentile(values: Sequence[float], q: float, *, digits: int = 2) -> float | None:
    """The ``q``-th percentile, rounded; None without samples."""
    if not len(values):
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), digits)


def percentiles(
    values: Sequence[float], *, digits: int = 2, empty: float = float("nan")
) -> dict[str, float]:
    """p50, p95 and p99, rounded; ``empty`` for each without samples."""
    if not len(values):
        return {f"p{q}": empty for q in REPORTED}
    cuts = np.percentile(np.asarray(values, dtype=float), REPORTED)
    return {f"p{q}": round(float(cut), digits) for q, cut in zip(REPORTED, cuts, strict=True)}
