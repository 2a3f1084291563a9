"""Counts read as a person writes them: singular for exactly one."""

from __future__ import annotations

import pytest

from shared.counts import counted, noun
from shared.kb.ingest import IngestReport


@pytest.mark.parametrize(
    ("count", "singular", "expected"),
    [
        (0, "document", "0 documents"),
        (1, "document", "1 document"),
        (2, "document", "2 documents"),
        (1, "batch", "1 batch"),
        (3, "batch", "3 batches"),
        (1, "new chunk", "1 new chunk"),
        (-1, "turn", "-1 turns"),
    ],
)
def test_a_count_takes_the_singular_only_for_one(count: int, singular: str, expected: str) -> None:
    assert counted(count, singular) == expected


def test_thousands_are_grouped_when_asked_and_an_irregular_plural_is_kept() -> None:
    assert counted(12_045, "turn", grouped=True) == "12,045 turns"
    assert counted(1, "turn", grouped=True) == "1 turn"
    assert noun(2, "person", "people") == "people" and noun(1, "person", "people") == "person"


def test_the_ingest_summary_of_one_document_and_one_chunk_is_in_the_singular() -> None:
    report = IngestReport()
    report.added, report.chunks = 1, 1
    summary = report.summary()
    assert summary.startswith("1 document (1 added, 0 replaced, 0 unchanged), 1 chunk written")
    report.added, report.chunks = 2, 3
    assert report.summary().startswith("2 documents (2 added, 0 replaced, 0 unchanged), 3 chunks")
