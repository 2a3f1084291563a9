"""Checks at the door: each names the field and the limit it broke."""

from __future__ import annotations

import re
import uuid

from shared.errors import InvalidInput

SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
MAX_SLUG_CHARS = 64


def check_slug(field: str, value: object, *, max_chars: int = MAX_SLUG_CHARS) -> str:
    """Ids chosen by callers (tenant, conversation): printable, bounded, no spaces."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(field, f"is {len(value)} characters; the limit is {max_chars}")
    if not SLUG.match(value):
        raise InvalidInput(
            field, "may hold only letters, digits and . _ : - and must start with a letter or digit"
        )
    return value


def check_turn_id(value: object, *, field: str = "turn_id") -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a UUID string, got {type(value).__name__}")
    try:
        parsed = uuid.UUID(value)
    except ValueError as exc:
        raise InvalidInput(field, f"{value[:40]!r} is not a UUID") from exc
    return str(parsed)


def check_message(value: object, *, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput("message", f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInput("message", "must not contain NUL characters")
    if not value.strip():
        raise InvalidInput("message", "must not be empty or only whitespace")
    if len(value) > max_chars:
        raise InvalidInput("message", f"is {len(value)} characters; the limit is {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("message", "is not valid UTF-8 text (lone surrogate)") from exc
    return value


def check_idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    return check_slug("idempotency_key", value, max_chars=128)
