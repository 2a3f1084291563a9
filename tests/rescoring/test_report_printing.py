"""The printed report shows what customers and agents wrote as it was written."""

from __future__ import annotations

import io

from rich.console import Console

from shared.tools.reports.rescoring import RunReport, print_report


def report_with(message: str, reason: str, *, overrides: dict[str, object]) -> RunReport:
    return RunReport(
        run={
            "id": "00000000-0000-0000-0000-000000000001",
            "tenant": "acme",
            "status": "completed",
            "total_turns": 1,
            "stages": ["orchestrator", "researcher"],
            "overrides": overrides,
        },
        turns=1,
        changed=1,
        agent_matrix={"adaptive_response": {"technical_consultant": 1}},
        level_shift={"MISSING": {"ACCURATE": 1}},
        examples=[
            {
                "conversation": "conv-[b]1",
                "seq": 3,
                "message": message,
                "old_agent": "adaptive_response",
                "new_agent": "technical_consultant",
                "old_level": "MISSING",
                "new_level": "ACCURATE",
                "new_routing_reason": reason,
            }
        ],
        cost={"calls": 2, "tokens_in": 10, "tokens_out": 5, "by_stage": {}},
    )


def printed(report: RunReport) -> str:
    out = io.StringIO()
    print_report(report, Console(file=out, width=250, color_system=None))
    return out.getvalue()


def test_square_brackets_in_messages_and_reasons_are_printed_as_written() -> None:
    text = printed(
        report_with(
            "[urgent] the scanner [/x] fails",
            "agent said [bold]no[/bold]",
            overrides={"note": "[/]"},
        )
    )
    assert "[urgent] the scanner [/x] fails" in text
    assert "agent said [bold]no[/bold]" in text
    assert "conv-[b]1#3" in text
    assert "'note': '[/]'" in text
