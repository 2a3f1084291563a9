"""WAL per turn, as the bench reports it (shared/tools/bench/wal_volume.py)."""

from __future__ import annotations

from shared.tools.bench.turns import wal_line
from shared.tools.bench.wal_volume import WalVolume


def test_volumes_subtract_and_add_field_by_field() -> None:
    before, after = WalVolume(10, 2, 1_000), WalVolume(70, 5, 31_000)
    assert after - before == WalVolume(60, 3, 30_000)
    assert (after - before) + WalVolume(1, 1, 1) == WalVolume(61, 4, 30_001)


def test_per_turn_divides_by_the_turns_measured() -> None:
    assert WalVolume(600, 40, 1_300_000).per_turn(100) == {
        "bytes": 13_000,
        "full_page_images": 0.4,
        "records": 6.0,
    }
    assert WalVolume(1, 1, 1).per_turn(0) == {}


def test_the_line_names_each_system_in_kilobytes() -> None:
    line = wal_line(
        {
            "parallel": {"bytes": 13_004, "full_page_images": 0.41, "records": 58.1},
            "sequential": {"bytes": 9_500, "full_page_images": 0.2, "records": 40.0},
        }
    )
    assert line == (
        "Postgres WAL per turn: parallel 13.0 kB (0.41 full-page images), "
        "sequential 9.5 kB (0.20 full-page images)"
    )
