"""Words a customer and the documents use for the same thing meet by their stems, both
ways, and only within a line of the list."""

from __future__ import annotations

from shared.synonyms import equivalent_stems
from shared.text import stem


def test_a_word_meets_the_words_of_its_line_in_every_form() -> None:
    assert stem("employees") in equivalent_stems(stem("staff"))
    assert stem("staff") in equivalent_stems(stem("employees"))
    assert stem("booking") in equivalent_stems(stem("reserved"))
    assert stem("trial") in equivalent_stems(stem("try"))


def test_lines_that_share_a_word_stay_apart() -> None:
    assert stem("car") in equivalent_stems(stem("vehicle"))
    assert stem("truck") in equivalent_stems(stem("vehicle"))
    assert stem("truck") not in equivalent_stems(stem("car"))


def test_a_word_on_no_line_meets_only_itself() -> None:
    assert equivalent_stems(stem("paypal")) == frozenset({stem("paypal")})
