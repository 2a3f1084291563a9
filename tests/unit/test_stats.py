"""One percentile definition for every report."""

from __future__ import annotations

import math
import statistics

import pytest

from shared.tools.stats import percentile, percentiles


def test_percentiles_interpolate_between_closest_ranks_like_statistics_inclusive() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert percentiles(values) == {
        "p50": round(cuts[49], 2),
        "p95": round(cuts[94], 2),
        "p99": round(cuts[98], 2),
    }
    assert percentile(values, 100) == 9.0
    assert percentile(values, 50, digits=0) == 3.0


def test_without_samples_a_report_says_so_its_own_way() -> None:
    assert percentile([], 50) is None
    assert all(math.isnan(v) for v in percentiles([]).values())
    assert percentiles([], empty=0.0) == {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert percentile([1.0, 2.0], 25) == pytest.approx(1.25)
