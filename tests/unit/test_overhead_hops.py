"""The hops of a turn's overhead cut it at the same points in chordline and the bare chord,
and add up to it."""

from __future__ import annotations

import pytest
from rich.console import Console

from shared.tools.bench.overhead_hops import HOPS, StageTimes, mean_hops, turn_hops
from shared.tools.bench.turns import hops_table


def test_the_hops_add_up_to_the_overhead_over_the_ideal_critical_path() -> None:
    arrived = 100.0
    orchestrator = StageTimes(100.004, 100.611, simulated_ms=600.0)  # finishes last
    researcher = StageTimes(100.005, 100.509, simulated_ms=500.0)
    agent = StageTimes(100.620, 101.8222, simulated_ms=1200.0)
    hops = turn_hops(arrived, [researcher, orchestrator], 100.616, agent)
    assert list(hops) == list(HOPS)
    assert hops["to the headers"] == pytest.approx(4.0)
    assert hops["header stages"] == pytest.approx(7.0)
    assert hops["to the merge"] == pytest.approx(5.0)
    assert hops["merge to agent"] == pytest.approx(4.0)
    assert hops["agent"] == pytest.approx(2.2)
    latency_ms = (agent.finished_at - arrived) * 1000
    assert sum(hops.values()) == pytest.approx(latency_ms - (600.0 + 1200.0))


def test_the_header_stage_on_the_critical_path_is_the_one_that_finished_last() -> None:
    # The researcher drew the shorter time but was picked up late: it is what the merge
    # waited for, and its lateness is overhead.
    orchestrator = StageTimes(0.002, 0.603, simulated_ms=600.0)
    researcher = StageTimes(0.150, 0.652, simulated_ms=500.0)
    hops = turn_hops(0.0, [orchestrator, researcher], 0.655, StageTimes(0.66, 1.0, 300.0))
    assert hops["to the headers"] == pytest.approx(150.0)
    assert hops["header stages"] == pytest.approx(502.0 - 600.0)  # it drew 100 ms less


def test_mean_hops_are_per_hop_means() -> None:
    first = dict.fromkeys(HOPS, 1.0)
    second = dict.fromkeys(HOPS, 3.0)
    assert mean_hops([first, second]) == dict.fromkeys(HOPS, 2.0)
    assert mean_hops([]) == {}


def test_the_table_sets_each_hop_beside_the_bare_chord_with_the_difference() -> None:
    console = Console(record=True, width=100)
    console.print(hops_table(dict.fromkeys(HOPS, 1.0), dict.fromkeys(HOPS, 1.5)))
    text = console.export_text()
    assert "merge to agent" in text and "+0.50" in text
    assert "total" in text and "5.00" in text and "7.50" in text and "+2.50" in text
