"""How chordline's errors map onto HTTP statuses and problem fields (no service needed)."""

from __future__ import annotations

import json

import pytest

from shared.api.problems import chordline_problem, status_of
from shared.api.sse import check_event_id
from shared.errors import (
    BodyTooLarge,
    ConversationBusy,
    ConversationNotFound,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    PermanentError,
    RateLimited,
    TurnNotFound,
    Unauthenticated,
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Unauthenticated("Authorization: no API key"), 401),
        (TurnNotFound("turn x does not exist"), 404),
        (ConversationNotFound("conversation 'c' does not exist"), 404),
        (IdempotencyConflict("k", turn_id="t", differs=["message"]), 409),
        (ConversationBusy("c1"), 409),
        (BodyTooLarge(70_000, 65_536), 413),
        (InvalidInput("message", "must not be empty"), 422),
        (RateLimited("too many", retry_after_s=7, limit=5), 429),
        (DatabaseUnavailable("Postgres (DATABASE_URL) could not be reached"), 503),
        (PermanentError("something else"), 500),
    ],
)
def test_each_error_has_its_status(error: Exception, status: int) -> None:
    assert status_of(error) == status  # type: ignore[arg-type]


def test_a_problem_names_the_field_the_limit_and_when_to_retry() -> None:
    conflict = chordline_problem(
        IdempotencyConflict("k", turn_id="t", differs=["message"]), instance="/x"
    )
    body = json.loads(bytes(conflict.body))
    assert body["field"] == "Idempotency-Key" and body["detail"].startswith("Idempotency-Key: 'k'")
    assert conflict.media_type == "application/problem+json"

    limited = chordline_problem(RateLimited("too many", retry_after_s=7, limit=5), instance=None)
    assert limited.headers["retry-after"] == "7" and json.loads(bytes(limited.body))["limit"] == 5

    down = chordline_problem(DatabaseUnavailable("down"), instance=None)
    assert down.status_code == 503 and down.headers["retry-after"] == "1"

    internal = chordline_problem(PermanentError("secret internals"), instance=None)
    assert "secret internals" not in json.loads(bytes(internal.body))["detail"]

    anonymous = chordline_problem(Unauthenticated("Authorization: no API key"), instance=None)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("value", ["0", "1-0", "1796567474105-0", "18446744073709551615-1"])
def test_stream_event_ids_that_resume(value: str) -> None:
    assert check_event_id(value, field="Last-Event-ID") == value


@pytest.mark.parametrize(
    "value", ["", "abc", "1-", "-1", "1-2-3", "18446744073709551616-0", "1 -0"]
)
def test_stream_event_ids_that_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"^Last-Event-ID: .* is not an event id"):
        check_event_id(value, field="Last-Event-ID")
