"""Word-level text analysis shared by the offline embedder, reranker and classifier.

``stem`` is the Snowball English stemmer (the ``snowballstemmer`` package, the algorithm
Postgres's ``english`` text search configuration uses too), so "encrypted", "encrypts" and
"encryption" meet, and the offline reranker agrees with the full-text half of the search.
``light_stem`` is the suffix stripper the offline embedder was defined with: vectors already
stored for ``local-hash-384`` were computed with it, so the embedder keeps it.
"""

from __future__ import annotations

import functools
import re
import threading

import snowballstemmer

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


_SNOWBALL = snowballstemmer.stemmer("english")
_SNOWBALL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """The Snowball (Porter 2) English stem of a lower-case word: "integrations",
    "integrated" and "integrate" are all "integr"."""
    with _SNOWBALL_LOCK:  # one stemmer object keeps state between calls
        return str(_SNOWBALL.stemWord(word))


def light_stem(word: str) -> str:
    """The offline embedder's suffix stripper (see the module docstring)."""
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
