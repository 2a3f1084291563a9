"""Calibrating the ACCURATE / PARTIAL / MISSING thresholds on a labelled question set.

The method, written down in README.md ("Knowledge levels"):

1. Ingest a knowledge base (the demo one by default) into a tenant.
2. Ask each labelled question the way the researcher does (embed, hybrid search, rerank),
   and keep the top reranked score. Labels say what the documents actually say: ACCURATE
   when they state the answer, PARTIAL when they state a related or partial answer,
   MISSING when they say nothing about what is asked.
3. Choose the pair of thresholds (partial <= accurate) that maximises balanced accuracy,
   the mean of the per-class accuracies, so the largest class cannot dominate. Candidate
   cut points are the midpoints between neighbouring scores; among equally good pairs the
   one with the widest margin to the nearest score wins, and the result is rounded to three
   decimals (kept unrounded if rounding would change a single prediction).
4. Report per-class accuracy for the fitted thresholds, for the current defaults, and in
   k-fold cross-validation (thresholds fitted without the fold they are tested on), which
   is the honest estimate for questions the set does not contain.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput
from shared.kb.levels import level_for, level_of_parts
from shared.providers.base import Usage
from shared.schemas import Agent, KbLevel, LevelThresholds, TenantSettings

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "tests" / "data" / "kb_questions.jsonl"
CV_FOLDS = 5
MIN_QUESTIONS = 2  # fitting with one held out needs at least one question left to fit on
LEVELS = tuple(level.value for level in KbLevel)
AGENTS = tuple(agent.value for agent in Agent)


@dataclass(frozen=True)
class LabelledQuestion:
    question: str
    level: KbLevel
    evidence: str
    agent: Agent | None = None  # the agent a person would choose (``kb eval``)


@dataclass(frozen=True)
class ScoredQuestion:
    """A labelled question's top reranked score, and the top score of each of its parts
    when it asks more than one thing (graded part by part, as the researcher grades it)."""

    question: str
    level: KbLevel
    top_score: float
    part_tops: tuple[float, ...] = ()

    def predicted(self, thresholds: LevelThresholds) -> KbLevel:
        if len(self.part_tops) > 1:
            return level_of_parts(self.part_tops, thresholds)
        return level_for([self.top_score], thresholds)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InvalidInput("--questions", f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            "--questions", f"{path} is not UTF-8 (invalid byte at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise InvalidInput("--questions", f"{path} cannot be read: {exc.strerror or exc}") from None


def _labelled(line: str) -> LabelledQuestion:
    """One line: a JSON object with a non-empty "question", a "level" and an optional
    "evidence"; ValueError saying what is wrong otherwise."""
    raw = json.loads(line)  # json.JSONDecodeError is a ValueError
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got a JSON {type(raw).__name__}")
    question, evidence = raw.get("question"), raw.get("evidence", "")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" must be a non-empty string')
    if not isinstance(evidence, str):
        raise ValueError('"evidence" must be a string')
    level = raw.get("level")
    if level not in LEVELS:  # compared with ==, so a list or an object is refused, not hashed
        raise ValueError(f'"level" must be one of {", ".join(LEVELS)}, got {level!r}')
    agent = raw.get("agent")
    if agent is not None and agent not in AGENTS:
        raise ValueError(f'"agent" must be one of {", ".join(AGENTS)}, got {agent!r}')
    return LabelledQuestion(
        question, KbLevel(level), evidence, Agent(agent) if agent is not None else None
    )


def check_enough(count: int) -> None:
    """Enough labelled questions to fit thresholds on (``min()`` of nothing otherwise)."""
    if count < MIN_QUESTIONS:
        raise InvalidInput(
            "--questions",
            f"holds {count} labelled question(s); at least {MIN_QUESTIONS} are needed to "
            "fit and cross-validate thresholds",
        )


def load_questions(path: Path) -> list[LabelledQuestion]:
    """The labelled questions of a JSON-lines file; InvalidInput naming the line at fault."""
    questions: list[LabelledQuestion] = []
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            questions.append(_labelled(line))
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            raise InvalidInput(
                "--questions", f"{path} line {number} is not a labelled question: {exc}"
            ) from None
    check_enough(len(questions))
    return questions


def score_questions(
    questions: Sequence[LabelledQuestion], *, tenant_id: str, settings: TenantSettings
) -> list[ScoredQuestion]:
    """The top reranked score of each question (and of each of its parts), searched as the
    researcher searches."""
    from shared.kb.research import scored_candidates

    scored = []
    for item in questions:
        found = scored_candidates(
            tenant_id=tenant_id,
            question=item.question,
            settings=settings,
            usage=Usage(),
            deadline=time.time() + 30,
        )
        tops = tuple(found.part_tops) if found is not None else (0.0,)
        scored.append(ScoredQuestion(item.question, item.level, max(tops), tops))
    return scored


def per_class_accuracy(
    scored: Sequence[ScoredQuestion], thresholds: LevelThresholds
) -> dict[str, float]:
    accuracy = {}
    for level in KbLevel:
        members = [s for s in scored if s.level is level]
        hits = sum(s.predicted(thresholds) is level for s in members)
        accuracy[level.value] = round(hits / len(members), 3) if members else 0.0
    return accuracy


def balanced_accuracy(scored: Sequence[ScoredQuestion], thresholds: LevelThresholds) -> float:
    values = per_class_accuracy(scored, thresholds).values()
    return round(sum(values) / len(values), 4)


def confusion(scored: Sequence[ScoredQuestion], thresholds: LevelThresholds) -> dict[str, Any]:
    """labelled level -> predicted level -> count."""
    matrix = {a.value: {p.value: 0 for p in KbLevel} for a in KbLevel}
    for s in scored:
        matrix[s.level.value][s.predicted(thresholds).value] += 1
    return matrix


def _scores(s: ScoredQuestion) -> tuple[float, ...]:
    return s.part_tops or (s.top_score,)


def _margin(scored: Sequence[ScoredQuestion], cuts: Sequence[float]) -> float:
    return min(abs(score - cut) for s in scored for score in _scores(s) for cut in cuts)


def fit_thresholds(scored: Sequence[ScoredQuestion]) -> LevelThresholds:
    """The thresholds with the best balanced accuracy, widest margin on ties, 3 decimals."""
    values = sorted({score for s in scored for score in _scores(s)} | {0.0, 1.0})
    cuts = [round((a + b) / 2, 4) for a, b in itertools.pairwise(values)]
    best: tuple[float, float, LevelThresholds] | None = None
    for partial, accurate in itertools.combinations_with_replacement(cuts, 2):
        candidate = LevelThresholds(accurate=accurate, partial=partial)
        key = (balanced_accuracy(scored, candidate), _margin(scored, (partial, accurate)))
        if best is None or key > best[:2]:
            best = (*key, candidate)
    assert best is not None
    fitted = best[2]
    rounded = LevelThresholds(accurate=round(fitted.accurate, 3), partial=round(fitted.partial, 3))
    same = all(s.predicted(rounded) is s.predicted(fitted) for s in scored)
    return rounded if same else fitted


def cross_validated_accuracy(
    scored: Sequence[ScoredQuestion], *, folds: int = CV_FOLDS
) -> dict[str, float]:
    """Per-class accuracy on held-out folds (every k-th question, stratified by label)."""
    ordered = sorted(scored, key=lambda s: (s.level.value, s.question))
    predictions: list[tuple[ScoredQuestion, KbLevel]] = []
    for fold in range(folds):
        held_out = ordered[fold::folds]
        training = [s for i, s in enumerate(ordered) if i % folds != fold]  # by position: a
        # question asked twice is two questions, one of which may be held out
        thresholds = fit_thresholds(training)
        predictions += [(s, s.predicted(thresholds)) for s in held_out]
    accuracy = {}
    for level in KbLevel:
        members = [(s, p) for s, p in predictions if s.level is level]
        accuracy[level.value] = (
            round(sum(p is level for _, p in members) / len(members), 3) if members else 0.0
        )
    return accuracy


def calibration_report(scored: Sequence[ScoredQuestion]) -> dict[str, Any]:
    check_enough(len(scored))
    fitted = fit_thresholds(scored)
    defaults = LevelThresholds()
    return {
        "questions": {lvl.value: sum(s.level is lvl for s in scored) for lvl in KbLevel},
        "fitted": {
            "thresholds": fitted.model_dump(),
            "per_class_accuracy": per_class_accuracy(scored, fitted),
            "balanced_accuracy": balanced_accuracy(scored, fitted),
        },
        "defaults": {
            "thresholds": defaults.model_dump(),
            "per_class_accuracy": per_class_accuracy(scored, defaults),
            "balanced_accuracy": balanced_accuracy(scored, defaults),
            "confusion": confusion(scored, defaults),
        },
        "cross_validated_per_class_accuracy": cross_validated_accuracy(scored),
        "misclassified_by_defaults": [
            {
                "question": s.question,
                "label": s.level.value,
                "predicted": s.predicted(defaults).value,
                "top_score": s.top_score,
            }
            for s in scored
            if s.predicted(defaults) is not s.level
        ],
    }
