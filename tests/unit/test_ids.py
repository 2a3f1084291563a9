"""Time-ordered ids (shared/ids.py): RFC 9562 version 7 UUIDs."""

from __future__ import annotations

import time
import uuid

from shared.ids import made_at_ms, time_ordered_uuid


def test_an_id_is_a_version_7_uuid_of_the_rfc_variant() -> None:
    value = time_ordered_uuid()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert uuid.UUID(str(value)) == value


def test_an_id_carries_the_millisecond_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    value = time_ordered_uuid()
    after = time.time_ns() // 1_000_000
    assert before <= made_at_ms(value) <= after
    assert made_at_ms(time_ordered_uuid(now_ms=1_700_000_000_123)) == 1_700_000_000_123


def test_ids_sort_by_the_millisecond_they_were_made() -> None:
    made = [time_ordered_uuid(now_ms=ms) for ms in range(1_700_000_000_000, 1_700_000_000_500)]
    assert sorted(made) == made
    assert sorted(str(v) for v in made) == [str(v) for v in made]  # as text too


def test_ids_made_in_the_same_millisecond_differ() -> None:
    same_ms = {time_ordered_uuid(now_ms=1_700_000_000_000) for _ in range(10_000)}
    assert len(same_ms) == 10_000


def test_the_random_part_is_not_constant() -> None:
    # 74 random bits: in 1,000 ids each of the low 62 bits is set in some and clear in others
    ids = [time_ordered_uuid(now_ms=0).int for _ in range(1_000)]
    for bit in range(62):
        seen = {(v >> bit) & 1 for v in ids}
        assert seen == {0, 1}, bit
