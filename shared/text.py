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


# The past forms of common irregular English verbs, by their base form. Snowball strips
# suffixes, so "paid", "kept" and "sent" would never meet "pay", "keep" and "send": a
# document written in the passive ("invoices are paid by card", "backups are kept for 30
# days") against a question in the present ("can we pay by card?"). Forms that are more
# often another word in product documentation ("left", "bound", "lay") are left out.
_IRREGULAR_VERBS = """
begin began begun | break broke broken | bring brought | build built | buy bought |
catch caught | choose chose chosen | come came | deal dealt | draw drew drawn |
drive drove driven | eat ate eaten | fall fell fallen | feed fed | feel felt |
fight fought | find found | fly flew flown | forbid forbade forbidden |
forget forgot forgotten | freeze froze frozen | give gave given | go went gone |
grow grew grown | hang hung | hear heard | hide hid hidden | hold held | keep kept |
know knew known | lend lent | lose lost | make made | mean meant | meet met |
override overrode overridden | overwrite overwrote overwritten | pay paid |
rebuild rebuilt | rewrite rewrote rewritten | ride rode ridden | ring rang rung |
rise rose risen | run ran | see saw seen | seek sought | sell sold | send sent |
shake shook shaken | shoot shot | show shown | sing sang sung | sink sank sunk | sit sat |
sleep slept | speak spoke spoken | spend spent | spin spun | stand stood |
steal stole stolen | stick stuck | strike struck | swim swam swum | take took taken |
teach taught | tear tore torn | think thought | throw threw thrown | undo undid undone |
understand understood | wake woke woken | wear wore worn | win won |
withdraw withdrew withdrawn | write wrote written
"""
IRREGULAR_FORMS = {
    form: forms.split()[0]
    for forms in _IRREGULAR_VERBS.replace("\n", " ").split("|")
    for form in forms.split()[1:]
}

_SNOWBALL = snowballstemmer.stemmer("english")
_SNOWBALL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """The Snowball (Porter 2) English stem of a lower-case word: "integrations",
    "integrated" and "integrate" are all "integr"; a past form of an irregular verb is
    stemmed as its base form ("paid" as "pay")."""
    with _SNOWBALL_LOCK:  # one stemmer object keeps state between calls
        return str(_SNOWBALL.stemWord(IRREGULAR_FORMS.get(word, word)))


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
