"""kb_information_level: how well the knowledge base covers a question.

From the reranked scores: the top score at or above the tenant's ``accurate`` threshold is
ACCURATE, at or above ``partial`` is PARTIAL, anything lower (or no hit) is MISSING.
Reranker scores are not linear in relevance, so the thresholds are calibrated per reranker
(on a labelled question set, or per tenant on questions derived from its own documents;
method in README.md).

A question with several parts ("Does it integrate with Xero, and how much is the Business
plan?") is graded part by part, each on its own top score: every part ACCURATE is
ACCURATE, every part MISSING is MISSING, anything else PARTIAL. A passage that answers one
half no longer makes the whole look half-covered, and a question answered in full across
two documents is ACCURATE.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shared.schemas import KbLevel, LevelThresholds
from shared.text import STOPWORDS, words

MAX_PARTS = 3
# "... and how much ...", "... and does it ...", "... and with Sage": a second question.
_SECOND_QUESTION = re.compile(
    r"\s*,?\s+(?:and|also|plus)\s+(?=(?:also\s+)?(?:how|what|when|where|which|who|why|whether|"
    r"does|do|is|are|can|could|will|would|should|with)\b)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[?!.;])\s+(?=\S)")


def _has_content(part: str) -> bool:
    return any(w not in STOPWORDS and len(w) > 2 for w in words(part))


def question_parts(question: str) -> list[str]:
    """The question's parts: its sentences, and clauses joined by "and" that ask something
    of their own. A fragment with no content word stays with a part next to it."""
    pieces = [
        clause
        for sentence in _SENTENCE_END.split(question.strip())
        for clause in _SECOND_QUESTION.split(sentence)
    ]
    parts: list[str] = []
    carried = ""  # a leading fragment with no content ("Hi."), joined to the next part
    for piece in (p.strip() for p in pieces):
        if not _has_content(piece):
            if parts:
                parts[-1] = f"{parts[-1]} {piece}"
            else:
                carried = f"{carried} {piece}".strip()
        else:
            parts.append(f"{carried} {piece}".strip())
            carried = ""
    if len(parts) > MAX_PARTS:
        parts = [*parts[: MAX_PARTS - 1], " ".join(parts[MAX_PARTS - 1 :])]
    return parts or [question]


def level_for(scores: Sequence[float], thresholds: LevelThresholds) -> KbLevel:
    top = max(scores, default=0.0)
    if top >= thresholds.accurate:
        return KbLevel.ACCURATE
    if top >= thresholds.partial:
        return KbLevel.PARTIAL
    return KbLevel.MISSING


def level_of_parts(part_tops: Sequence[float], thresholds: LevelThresholds) -> KbLevel:
    """The level of a question from the top score of each of its parts."""
    levels = {level_for([top], thresholds) for top in part_tops}
    if len(levels) == 1:
        return levels.pop()
    return KbLevel.PARTIAL if levels else KbLevel.MISSING
