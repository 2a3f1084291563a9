"""Workers' Prometheus file_sd targets: one file per process, so two processes of one name
(`chordline demo` beside `chordline up`) do not remove each other's; a dead process's file
goes when its name is taken again."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from shared.metrics import scrape_targets, write_scrape_target


def test_a_process_of_the_same_name_keeps_the_others_target_and_clears_dead_ones(
    tmp_path: Path,
) -> None:
    other = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        for pid, port in ((other.pid, 9801), (dead.pid, 9802)):
            entry = [{"targets": [f"127.0.0.1:{port}"], "labels": {"worker": "merge@h"}}]
            (tmp_path / f"merge@h-{pid}.json").write_text(json.dumps(entry))
        (tmp_path / "merge@h.json").write_text("[]")  # the earlier one-file-per-name form
        (tmp_path / "merge@h2-1.json").write_text("[]")  # another worker's name: untouched

        mine = write_scrape_target(tmp_path, nodename="merge@h", address="127.0.0.1:9803")

        assert mine == tmp_path / f"merge@h-{os.getpid()}.json"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [mine.name, f"merge@h-{other.pid}.json", "merge@h2-1.json"]
        )
        mine.unlink()  # what the exporter does when its process ends
        assert scrape_targets(tmp_path) == {"merge@h": "http://127.0.0.1:9801/metrics"}
    finally:
        other.kill()
        other.wait()
