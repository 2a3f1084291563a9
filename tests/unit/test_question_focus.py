"""What a message asks the knowledge base about: a content request's framing and a problem
report's time frame are left out; everything else is searched as written."""

from __future__ import annotations

import pytest

from shared.kb.focus import question_focus


@pytest.mark.parametrize(
    ("message", "focus"),
    [
        (
            "Write a short email to my store managers explaining how shift swaps work.",
            "how shift swaps work.",
        ),
        ("Can you draft a one-page summary of the Plus plan for our owner?", "the Plus plan?"),
        (
            "Write a short summary of the Business plan that I can send to my manager.",
            "the Business plan.",
        ),
        (
            "Please put together an FAQ about desk check-in, so we can share it with staff",
            "desk check-in",
        ),
        (
            "Since yesterday my staff are not getting the new schedule on their phones.",
            "my staff are not getting the new schedule on their phones.",
        ),
        ("Our payroll export came out empty this month.", "Our payroll export came out empty."),
        (
            "For the past three days the app has been crashing on login",
            "the app has been crashing on login",
        ),
        ("Who won the football match last night?", "Who won the football match?"),
        (
            "Can you write a short note to all staff explaining how the waiting list works?",
            "how the waiting list works?",
        ),
        # "for the ..." is no audience (only "my" or "our" people are): it stays
        ("Write an email for the launch of the Plus plan", "for the launch of the Plus plan"),
    ],
)
def test_the_framing_is_left_out(message: str, focus: str) -> None:
    assert question_focus(message) == focus


@pytest.mark.parametrize(
    "message",
    [
        "How much is the Pro plan?",
        # a question about email, not a request for one
        "Can I send an email to all employees?",
        "Is support available on weekends?",
        "What happens at the end of the month?",
        # nothing but framing: kept whole rather than searched as nothing
        "Today",
        "Can you write me a short email?",
    ],
)
def test_a_message_without_framing_is_searched_as_written(message: str) -> None:
    assert question_focus(message) == message
