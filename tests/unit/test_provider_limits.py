"""CHORDLINE_PROVIDER_LIMITS as written by an operator: parsed, or refused naming the entry."""

from __future__ import annotations

import pytest

from shared.limit_spec import ModelLimit, parse_limits


def test_limits_per_provider_and_model() -> None:
    assert parse_limits(" openai/gpt-4o-mini=500rpm:200000tpm, cohere/rerank-v3.5=1000rpm ,") == {
        "openai/gpt-4o-mini": ModelLimit(rpm=500, tpm=200000),
        "cohere/rerank-v3.5": ModelLimit(rpm=1000),
    }
    assert parse_limits("") == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("gpt-4o-mini=500rpm", "'gpt-4o-mini=500rpm' is not provider/model=LIMIT[:LIMIT]"),
        ("openai/gpt-4o=5rps", "'5rps' in 'openai/gpt-4o=5rps' is not a limit"),
        ("openai/gpt-4o=0rpm", "'0rpm' in 'openai/gpt-4o=0rpm' is not a limit"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_limits(text)
    assert str(refused.value).startswith(problem)
