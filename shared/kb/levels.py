"""kb_information_level: how well the knowledge base covers a question.

From the reranked scores: the top score at or above the tenant's ``accurate`` threshold is
ACCURATE, at or above ``partial`` is PARTIAL, anything lower (or no hit) is MISSING.
Reranker scores are not linear in relevance, so the thresholds are calibrated per reranker
on a labelled question set (tests/data/kb_questions.jsonl; method in README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.schemas import KbLevel, LevelThresholds


def level_for(scores: Sequence[float], thresholds: LevelThresholds) -> KbLevel:
    top = max(scores, default=0.0)
    if top >= thresholds.accurate:
        return KbLevel.ACCURATE
    if top >= thresholds.partial:
        return KbLevel.PARTIAL
    return KbLevel.MISSING
