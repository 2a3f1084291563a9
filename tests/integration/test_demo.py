"""The demo's scripted conversation, run on the test session's real stack."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from shared.demo import SCRIPT, run_demo

pytestmark = pytest.mark.integration


def test_demo_reaches_every_agent_and_level_with_overlapping_header_stages(workers: None) -> None:
    out = io.StringIO()
    code = run_demo(console=Console(file=out, width=160), timeout_s=90)
    printed = out.getvalue()
    assert code == 0, printed
    assert printed.count("overlapped") == len(SCRIPT)
    for agent in (
        "discovery",
        "support",
        "technical_consultant",
        "adaptive_response",
        "content_generator",
    ):
        assert agent in printed
