"""Ids that sort by the time they were made: UUID version 7 (RFC 9562, section 5.7).

The rows chordline writes most (turns, their conversations, outbox rows and spans) are
keyed by UUIDs. A random (version 4) key lands on a random page of its primary-key index,
so as a table grows every insert touches a page that no recent insert did: more of the
index must stay in memory, and the first change to each page after a checkpoint puts a
full copy of the page in the WAL. A version 7 id starts with the Unix time in
milliseconds, so new keys go to the index's rightmost pages, as a serial key's would,
while ids stay unguessable (74 random bits) and can be made anywhere without a database
round trip. An id tells when it was made, to the millisecond, which the turn's own
``accepted_at`` says anyway. Python's ``uuid.uuid7`` arrives only in 3.14.
"""

from __future__ import annotations

import os
import time
import uuid

_RANDOM_BITS = 74  # 12 bits of rand_a, 62 of rand_b
_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62


def time_ordered_uuid(*, now_ms: int | None = None) -> uuid.UUID:
    """A new version 7 UUID: 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big") >> (80 - _RANDOM_BITS)
    rand_a, rand_b = rand >> 62, rand & ((1 << 62) - 1)
    return uuid.UUID(
        int=((ms & ((1 << 48) - 1)) << 80) | _VERSION | (rand_a << 64) | _VARIANT | rand_b
    )


def made_at_ms(value: uuid.UUID) -> int:
    """The Unix milliseconds a version 7 id carries."""
    return value.int >> 80
