"""The demo's scripted conversation, run on the test session's real stack."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from shared.tools.demo.conversation import SCRIPT, coverage_gaps, parallel_evidence, play_demo

pytestmark = pytest.mark.integration


def test_demo_reaches_every_agent_and_level_with_header_stages_in_parallel(workers: None) -> None:
    turns = play_demo(console=Console(file=io.StringIO()), timeout_s=90)
    assert len(turns) == len(SCRIPT)
    assert coverage_gaps(turns) == []
    assert all(t.reply for t in turns)
    # Every turn ran its header stages on different queues and processes; the session's
    # workers simulate only 30-80 ms per header stage, so on a loaded machine a queue wait
    # can occasionally exceed one of them: most turns, not all, must show the overlap.
    overlapped = [t for t in turns if parallel_evidence(t) is None]
    assert len(overlapped) >= len(SCRIPT) - 2, [parallel_evidence(t) for t in turns]
    for turn in turns:
        queues = {b.stage: b.queue for b in turn.bars}
        assert queues["orchestrator"] == "orchestrator" and queues["researcher"] == "researcher"
