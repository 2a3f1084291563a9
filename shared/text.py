"""Word-level text analysis shared by the offline embedder, reranker and classifier."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")

_STOPWORD_TEXT = """
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from
further had has have having he her here hers him his how i if in into is it its itself
just me more most my no nor not now of off on once only or other our ours out over own
same she should so some such than that the their theirs them then there these they this
those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself hi hello hey thanks thank please ok
okay yes yeah us let know tell like want need get got go going one two three
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_SUFFIXES = (
    "ations",
    "ation",
    "ments",
    "ment",
    "ings",
    "ing",
    "ies",
    "ied",
    "ers",
    "er",
    "ed",
    "ly",
    "es",
    "s",
)


def stem(word: str) -> str:
    """A light suffix stripper: enough to match 'integrations' with 'integrate'."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]
    return word


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content_terms(text: str) -> list[str]:
    """Stemmed words that carry meaning, in order, duplicates kept."""
    return [stem(w) for w in words(text) if w not in STOPWORDS and len(w) > 1]


def count_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for offline accounting."""
    return max(1, len(text) // 4)
