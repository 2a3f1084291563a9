"""The fault suite's pass condition, beyond ending each turn once: a scenario passes only if
the turns it did not fail on purpose completed, within the recovery target."""

from __future__ import annotations

from tests.faults.invariant import Outcome, recovery_problems
from tests.faults.rig import RECOVERY_TARGET_S


def test_every_turn_failing_with_a_reason_is_not_a_pass() -> None:
    outcome = Outcome("all failed", accepted=20, completed=0, failed=20, worst_end_s=3.0)
    assert recovery_problems(outcome, meant_to_fail=0, target_s=20) == [
        "0 of 20 turns completed, 20 must (0 failed on purpose)"
    ]


def test_the_turns_a_scenario_fails_on_purpose_are_allowed_and_no_more() -> None:
    outcome = Outcome("poison", accepted=20, completed=19, failed=1, worst_end_s=7.0)
    assert recovery_problems(outcome, meant_to_fail=1, target_s=20) == []
    two_failed = Outcome("poison", accepted=20, completed=18, failed=2, worst_end_s=7.0)
    assert recovery_problems(two_failed, meant_to_fail=1, target_s=20)


def test_a_turn_ending_after_the_recovery_target_fails_the_scenario() -> None:
    late = Outcome("slow", accepted=5, completed=5, worst_end_s=RECOVERY_TARGET_S + 0.1)
    (problem,) = recovery_problems(late, meant_to_fail=0, target_s=RECOVERY_TARGET_S)
    assert "above the 20 s target" in problem
    assert RECOVERY_TARGET_S == 20.0  # 2 x (visibility 8 s + restore check 1 s) + 2 s


def test_turns_cancelled_by_a_later_message_need_not_complete() -> None:
    outcome = Outcome("interrupts", accepted=20, completed=15, cancelled=5, worst_end_s=3.0)
    assert recovery_problems(outcome, meant_to_fail=0, target_s=20) == []
    one_lost = Outcome("interrupts", accepted=20, completed=14, cancelled=5, worst_end_s=3.0)
    assert recovery_problems(one_lost, meant_to_fail=0, target_s=20) == [
        "14 of 20 turns completed, 15 must (0 failed on purpose, 5 cancelled)"
    ]
