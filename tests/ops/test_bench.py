"""`chordline bench --baseline` as a person runs it: chordline and the bare Celery chord beside
it, on real workers, Postgres and Redis, with the side-by-side figures, CPU per process and the
latency picture. The figures themselves are for the benchmark to judge, not for a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.tools.bench.overhead_hops import HOPS
from shared.tools.bench.turns import Arrival, busy_s, summarise
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHORDLINE = str(Path(sys.executable).parent / "chordline")


def test_in_flight_counts_only_the_windows_a_system_had_turns_in() -> None:
    # two rounds of one system, 10 s apart while another system ran: 2 s busy, not 12
    intervals = [(0.0, 1.0), (0.5, 1.0), (11.0, 12.0)]
    assert busy_s(intervals) == pytest.approx(2.0)
    assert busy_s([(0.0, 3.0), (1.0, 2.0)]) == pytest.approx(3.0)
    assert busy_s([]) == 0.0


def test_in_flight_mean_of_a_system_served_in_two_rounds_is_littles_law_over_its_rounds() -> None:
    # ten turns a second, each in flight 1 s, in two rounds of 1 s with 20 s between them
    arrivals = [Arrival(f"t{r}-{i}", 20.0 * r + i / 10, 1.0) for r in (0, 1) for i in range(10)]
    ended = {a.turn_id: (a.scheduled_at + 1.0, 900.0) for a in arrivals}
    summary, samples = summarise(arrivals, ended)
    # 20 turns x 1 s over 2 x 1.9 s busy; not 20 s / 21.9 s across the gap
    assert summary["in_flight_mean"] == pytest.approx(20 / 3.8, abs=0.1)
    assert summary["overhead_ms"]["p50"] == pytest.approx(100.0)
    assert summary["errors"] == 0 and len(samples.latency_ms) == 20


def test_bench_with_baseline_prints_both_systems_with_cpu_and_draws_the_cdfs(
    services: None, tmp_path: Path
) -> None:
    picture = tmp_path / "latency.png"
    done = subprocess.run(
        [
            CHORDLINE,
            "bench",
            "--baseline",
            "--topology",
            "parallel",
            "--rate",
            "10",
            "--duration",
            "2",
            "--rounds",
            "2",
            "--json",
            "--plot",
            str(picture),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for system in ("baseline", "parallel"):
        figures = result[system]
        assert figures["errors"] == 0 and figures["turns"] > 0
        assert 0 < figures["overhead_ms"]["p50"] <= figures["overhead_ms"]["p99"]
        cpu = result["cpu_ms_per_turn"][system]
        assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), 0.02)
        assert {"client", "orchestrator", "researcher", "merge", "agents", "redis"} <= set(cpu)
    assert "postgres" in result["cpu_ms_per_turn"]["parallel"]
    assert "postgres" not in result["cpu_ms_per_turn"]["baseline"]
    assert set(result["vs_baseline"]) == {"overhead_p50", "overhead_p99", "cpu_per_turn"}
    # chordline's turns write the WAL (each commits its row, spans and outbox); the bare
    # chord has no Postgres
    wal = result["wal_per_turn"]
    assert set(wal) == {"parallel"}
    assert wal["parallel"]["bytes"] > 1000 and wal["parallel"]["records"] >= 10
    assert 0 <= wal["parallel"]["full_page_images"] < wal["parallel"]["records"]
    for system in ("baseline", "parallel"):  # every hop between stages takes the broker's time
        hops = result["overhead_hops_ms"][system]
        assert list(hops) == list(HOPS)
        assert min(hops["to the headers"], hops["to the merge"], hops["merge to agent"]) > 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "round 1/2" in done.stderr
    # the bare chord's publisher lets go of its results before it exits: no traceback
    assert "Traceback" not in done.stderr, done.stderr[-2000:]


def test_bench_via_http_posts_the_same_arrivals_through_the_api_beside_the_client(
    services: None,
) -> None:
    done = subprocess.run(
        [
            CHORDLINE,
            "bench",
            "--via",
            "http",
            "--topology",
            "parallel",
            "--rate",
            "10",
            "--duration",
            "2",
            "--rounds",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    client, http = result["parallel"], result["parallel-http"]
    assert http["turns"] == client["turns"] > 0  # the same arrivals
    assert http["errors"] == 0 and client["errors"] == 0
    assert 0 < http["overhead_ms"]["p50"] <= http["overhead_ms"]["p99"]
    assert "web" in result["cpu_ms_per_turn"]["parallel-http"]
    assert "web" not in result["cpu_ms_per_turn"]["parallel"]
    assert set(result["http_vs_client"]["parallel"]) == {
        "overhead_p50_ms",
        "overhead_p99_ms",
        "enqueue_p99_ms",
        "cpu_ms_per_turn",
    }
    assert "parallel-http" in done.stderr  # the rounds announce it


def test_bench_refuses_an_unknown_via() -> None:
    done = subprocess.run(
        [CHORDLINE, "bench", "--via", "carrier-pigeon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "'carrier-pigeon' is not one of client, http" in done.stderr
