"""One exception root, split by what the caller should do about it.

``TransientError``: retry with backoff, the same call may succeed later.
``PermanentError``: fail now, clearly; retrying cannot help.
Docstrings double as default messages.
"""

from __future__ import annotations


class ChordlineError(Exception):
    """chordline failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class TransientError(ChordlineError):
    """A dependency is briefly unavailable; retrying may succeed."""


class PermanentError(ChordlineError):
    """The request cannot succeed as it is; retrying will not help."""


class InvalidInput(PermanentError):
    """The input was rejected before anything was written or enqueued."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class UnknownTenant(InvalidInput):
    """No such tenant."""

    def __init__(self, tenant: str) -> None:
        super().__init__(
            "tenant", f"unknown tenant {tenant!r}; create it with `chordline tenant create`"
        )


class IdempotencyConflict(InvalidInput):
    """The idempotency key already belongs to a turn with another message or conversation."""

    def __init__(self, key: str, *, turn_id: str, differs: list[str]) -> None:
        self.key = key
        self.turn_id = turn_id
        self.differs = differs
        super().__init__(
            "idempotency_key",
            f"{key!r} already belongs to turn {turn_id}, which has a different "
            f"{' and '.join(differs)}; nothing was written or enqueued",
        )


class ConversationBusy(InvalidInput):
    """The conversation has a turn in flight and its tenant's policy rejects another."""

    def __init__(self, conversation: str) -> None:
        super().__init__("conversation", f"{conversation!r} already has a turn in flight")


class TurnNotFound(PermanentError):
    """No such turn."""


class ConversationNotFound(PermanentError):
    """No such conversation."""


class Unauthenticated(PermanentError):
    """The request carries no API key, or one that is unknown or revoked."""


class RateLimited(TransientError):
    """An API key sent more requests than its limit allows in the current window."""

    def __init__(self, message: str, *, retry_after_s: int, limit: int) -> None:
        self.retry_after_s = retry_after_s
        self.limit = limit
        super().__init__(message)


class BodyTooLarge(InvalidInput):
    """A request body is larger than the service accepts."""

    def __init__(self, size: int | None, limit: int) -> None:
        self.limit = limit
        shown = "is larger" if size is None else f"is {size} bytes"
        super().__init__(
            "body", f"{shown}; the limit is {limit} bytes (CHORDLINE_WEB_MAX_BODY_BYTES)"
        )


class OwnershipViolation(PermanentError):
    """A stage, or another writer of turns, tried to write a field it does not own."""


class IllegalTransition(PermanentError):
    """A writer tried to move a turn between statuses it may not (shared/turn_state.py)."""


class StageConflict(PermanentError):
    """The turn is not in a state in which this stage may run."""


class TurnFailed(PermanentError):
    """The turn ended failed."""


class TurnTimeout(TransientError):
    """The turn did not end within the wait."""


class ProviderError(TransientError):
    """A model provider call failed transiently (rate limit, 5xx, timeout, reset)."""


class ProviderConfigError(PermanentError):
    """A model provider rejected the request because of its configuration."""


class BrokerUnavailable(TransientError):
    """The broker (Redis) cannot be reached."""


class DatabaseUnavailable(TransientError):
    """Postgres cannot be reached, or could not run the statement just now."""


class EmbeddedServerError(PermanentError):
    """An embedded server could not be started."""


class InvalidSetting(PermanentError):
    """A setting from the environment is malformed or out of range."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}" if setting else problem)


class ServiceUnreachable(TransientError):
    """Postgres or Redis, as a setting names it, cannot be reached."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class AdmissionRefused(PermanentError):
    """The tenant is over an admission limit; nothing was written or enqueued."""

    def __init__(self, setting: str, problem: str, *, retry_after_s: float) -> None:
        self.setting = setting
        self.retry_after_s = retry_after_s
        super().__init__(
            f"{setting}: {problem}; nothing was written or enqueued; "
            f"retry after {retry_after_s:.1f} s"
        )
