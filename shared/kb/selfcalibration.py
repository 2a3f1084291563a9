"""Tenants calibrate themselves: thresholds from questions derived from their own documents.

After an ingest that changes a tenant's knowledge base, and on ``chordline kb calibrate
--tenant T``, chordline asks three kinds of question it writes itself, searched and
reranked exactly as the researcher does with the tenant's own embedder and reranker:

- *answered* (ACCURATE): from a chunk of the tenant's own documents, a question made of
  three of its most distinctive words ("How does reminders Slack linked work?"): the chunk
  states it.
- *half answered* (PARTIAL): the same kind of question about a thing from contrasting
  material that the documents never mention ("How does reminders Slack linked work with
  Zendesk?"): they cover it in part.
- *not answered* (MISSING): one of the tenant's most common words with such a thing ("Does
  the booking work with Klarna?"), and questions about other trades entirely.

The shape of these questions was chosen on the demo knowledge base, whose labelled
questions the thresholds derived this way sort nearly as well as thresholds fitted on the
labels themselves (balanced accuracy 0.908 against 0.926).

The contrasting material is shipped with chordline (``shared/kb/contrast/``); a name or a
question whose words occur in the tenant's documents is left out for that tenant. The
thresholds that best separate the three kinds (``fit_thresholds``, the method of ``kb
calibrate`` on labelled questions) become the tenant's, unless the tenant pinned its own
(``thresholds.pinned``, set whenever ``thresholds.accurate`` or ``thresholds.partial`` is
set by hand). The report is kept in ``tenants.calibration`` and printed.

The derivation is deterministic for a given knowledge base (seeded by its chunks' text), so
the same documents give the same thresholds, in any tenant.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.config import get_settings
from shared.db.session import session_scope
from shared.db.tenants import apply_overrides, recent_tenant_settings, require_tenant
from shared.errors import InvalidInput
from shared.kb.calibration import (
    ScoredQuestion,
    balanced_accuracy,
    fit_thresholds,
    per_class_accuracy,
)
from shared.providers.base import Usage
from shared.providers.local import QUESTION_SCAFFOLDING
from shared.schemas import KbLevel, LevelThresholds, TenantSettings
from shared.text import STOPWORDS, stem, words

CONTRAST = Path(__file__).resolve().parent / "contrast"
ANSWERED, HALF_ANSWERED, NOT_ANSWERED = 24, 16, 24
MIN_CHUNKS = 3
_DISTINCT_WORD = re.compile(r"^[a-z][a-z0-9]{3,}$")
_SCAFFOLDING = QUESTION_SCAFFOLDING  # words that shape a question, not its subject


class TooFewChunks(InvalidInput):
    """The tenant's knowledge base is too small to derive questions from."""

    def __init__(self, problem: str) -> None:
        super().__init__("knowledge base", problem)


@dataclass(frozen=True)
class DerivedQuestion:
    question: str
    level: KbLevel


def _contrast_lines(name: str) -> list[str]:
    lines = (CONTRAST / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _stems(text_: str) -> set[str]:
    return {stem(w) for part in words(text_) for w in part.split("-") if w not in STOPWORDS}


@dataclass(frozen=True)
class TenantText:
    chunks: list[str]
    vocabulary: set[str]  # stems
    chunk_frequency: Counter[str]  # word -> chunks holding it

    @classmethod
    def of(cls, chunks: list[str]) -> TenantText:
        frequency: Counter[str] = Counter()
        vocabulary: set[str] = set()
        for chunk in chunks:
            frequency.update(dict.fromkeys(words(chunk), 1))  # each word once, in order
            vocabulary |= _stems(chunk)
        return cls(chunks, vocabulary, frequency)


def tenant_text(session: Session, tenant_id: str) -> TenantText:
    """The tenant's chunks (heading, text and aliases), with their words."""
    rows = session.execute(
        text(
            "SELECT heading, text, aliases FROM kb_chunks WHERE tenant_id = :t "
            "ORDER BY content_hash, heading, ordinal"  # by content: the same in any tenant
        ),
        {"t": tenant_id},
    ).all()
    return TenantText.of([f"{r.heading}\n{r.text}\n{r.aliases}" for r in rows])


def _distinct_words(chunk: str, kb: TenantText) -> list[str]:
    """The chunk's content words, rarest in the knowledge base first."""
    found = dict.fromkeys(
        w
        for w in words(chunk)
        if _DISTINCT_WORD.match(w) and w not in STOPWORDS and w not in _SCAFFOLDING
    )
    return sorted(found, key=lambda w: (kb.chunk_frequency[w], w))


def _foreign(candidates: Sequence[str], kb: TenantText) -> list[str]:
    """Contrasting names or questions that share no (or, for a question, few) words with the
    tenant's documents."""
    kept = []
    for candidate in candidates:
        stems = _stems(candidate)
        shared = len(stems & kb.vocabulary)
        if stems and (shared == 0 or (len(stems) > 3 and shared <= len(stems) // 4)):
            kept.append(candidate)
    return kept


def derive_questions(kb: TenantText) -> list[DerivedQuestion]:
    """Questions the tenant's documents answer, half answer and do not answer."""
    if len(kb.chunks) < MIN_CHUNKS:
        raise TooFewChunks(
            f"the knowledge base holds {len(kb.chunks)} chunk(s); at least {MIN_CHUNKS} are "
            "needed to derive calibration questions"
        )
    rng = random.Random(hashlib.sha256("\n".join(kb.chunks).encode()).hexdigest())
    names = _foreign(_contrast_lines("names.txt"), kb)
    off_domain = _foreign(_contrast_lines("questions.txt"), kb)
    usable = [(c, d) for c in kb.chunks if len(d := _distinct_words(c, kb)) >= 3]
    if not usable or not names:
        raise TooFewChunks("the documents have too few distinct words to derive questions from")
    common = sorted(kb.chunk_frequency, key=lambda w: (-kb.chunk_frequency[w], w))
    common = [
        w
        for w in common
        if _DISTINCT_WORD.match(w) and w not in STOPWORDS and w not in _SCAFFOLDING
    ][:30]
    derived: list[DerivedQuestion] = []
    for i in range(ANSWERED):
        _, distinct = usable[i % len(usable)]
        a, b, c = rng.sample(distinct[: max(3, math.ceil(len(distinct) / 2))], 3)
        derived.append(DerivedQuestion(f"How does {a} {b} {c} work?", KbLevel.ACCURATE))
    for i in range(HALF_ANSWERED):
        _, distinct = usable[(i * 7 + 3) % len(usable)]
        a, b, c = rng.sample(distinct[: max(3, math.ceil(len(distinct) / 2))], 3)
        name = rng.choice(names)
        derived.append(DerivedQuestion(f"How does {a} {b} {c} work with {name}?", KbLevel.PARTIAL))
    for i in range(NOT_ANSWERED):
        if i % 2 and off_domain:
            derived.append(DerivedQuestion(off_domain[i // 2 % len(off_domain)], KbLevel.MISSING))
            continue
        word = rng.choice(common or ["product"])
        name = rng.choice(names)
        derived.append(DerivedQuestion(f"Does the {word} work with {name}?", KbLevel.MISSING))
    return derived


def score_derived(
    questions: Sequence[DerivedQuestion], *, tenant_id: str, settings: TenantSettings
) -> list[ScoredQuestion]:
    """Each question searched and reranked as the researcher does it; the questions are
    embedded together, in batches (one call per batch with an embedding API)."""
    from shared.kb.focus import question_focus
    from shared.kb.ingest import embed_texts, embedding_deadline
    from shared.kb.research import scored_candidates
    from shared.providers.registry import get_providers

    vectors = embed_texts(
        get_providers().embedder,
        [question_focus(q.question) for q in questions],
        batch=get_settings().kb.embed_batch,
        deadline=embedding_deadline(),
    )
    scored = []
    for item, vector in zip(questions, vectors, strict=True):
        found = scored_candidates(
            tenant_id=tenant_id,
            question=item.question,
            settings=settings,
            usage=Usage(),
            deadline=time.time() + 60,
            vector=vector,
        )
        tops = tuple(found.part_tops) if found is not None else (0.0,)
        scored.append(ScoredQuestion(item.question, item.level, max(tops), tops))
    return scored


def scorer_of(settings: TenantSettings) -> str:
    """What scores the tenant's questions, as a calibration records it: the reranker and
    its model ("cohere:rerank-v3.5"), or the offline reranker and its revision ("local@7")."""
    from shared.providers.registry import get_providers

    reranker = get_providers().reranker
    revision = getattr(reranker, "revision", None)
    if revision is not None:
        return f"{reranker.name}@{revision}"
    return f"{reranker.name}:{settings.models.rerank}"


def stale_calibration(
    tenant_id: str, report: dict[str, Any] | None, settings: TenantSettings
) -> str | None:
    """Why the tenant's thresholds may not fit the scorer that now grades its questions
    (they were calibrated with another one), or None. Thresholds pinned by hand, and a
    tenant never calibrated (it has the defaults), are left alone."""
    if report is None or settings.thresholds.pinned:
        return None
    now = scorer_of(settings)
    then = report.get("scorer")
    if then == now:
        return None
    return (
        f"the thresholds were calibrated with {then or 'an earlier scorer'}, and {now} "
        f"scores the questions now; run `chordline kb calibrate --tenant {tenant_id}` to "
        "fit them"
    )


def calibrate_tenant(tenant_id: str) -> dict[str, Any]:
    """Derive, score and fit; set the tenant's thresholds unless it pinned them. Returns the
    report (also stored in ``tenants.calibration``)."""
    with session_scope() as session:
        settings = require_tenant(session, tenant_id)
        kb = tenant_text(session, tenant_id)
    started = time.perf_counter()
    derived = derive_questions(kb)
    scored = score_derived(derived, tenant_id=tenant_id, settings=settings)
    fitted = fit_thresholds(scored)
    pinned = settings.thresholds.pinned
    report = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "questions": {lvl.value: sum(q.level is lvl for q in derived) for lvl in KbLevel},
        "fitted": {
            "accurate": fitted.accurate,
            "partial": fitted.partial,
            "per_class_accuracy": per_class_accuracy(scored, fitted),
            "balanced_accuracy": balanced_accuracy(scored, fitted),
        },
        "pinned": pinned,
        "scorer": scorer_of(settings),
        "thresholds": (settings.thresholds if pinned else fitted).model_dump(
            include={"accurate", "partial"}
        ),
        "seconds": round(time.perf_counter() - started, 2),
        "examples": {
            lvl.value: [s.question for s in scored if s.level is lvl][:2] for lvl in KbLevel
        },
    }
    store_calibration(tenant_id, report, None if pinned else fitted)
    return report


def store_calibration(
    tenant_id: str, report: dict[str, Any], thresholds: LevelThresholds | None
) -> None:
    """The report, and the thresholds unless None (pinned), in one transaction."""
    with session_scope() as session:
        current = require_tenant(session, tenant_id)
        if thresholds is not None:
            current = apply_overrides(
                current,
                {
                    "thresholds.accurate": thresholds.accurate,
                    "thresholds.partial": thresholds.partial,
                },
            )
        stored = json.loads(current.model_dump_json(exclude_defaults=True))
        if thresholds is not None:
            # Kept as numbers even when they equal today's defaults: a later release that
            # moves the defaults must not move a tenant's calibrated thresholds.
            stored.setdefault("thresholds", {}).update(
                accurate=thresholds.accurate, partial=thresholds.partial
            )
        session.execute(
            text(
                "UPDATE tenants SET settings = CAST(:settings AS jsonb), "
                "calibration = CAST(:report AS jsonb) WHERE id = :t"
            ),
            {"t": tenant_id, "settings": _json(stored), "report": _json(report)},
        )
    recent_tenant_settings.forget(tenant_id)


def _json(value: Any) -> str:
    return json.dumps(value)


def stored_calibration(session: Session, tenant_id: str) -> dict[str, Any] | None:
    require_tenant(session, tenant_id)
    found = session.execute(
        text("SELECT calibration FROM tenants WHERE id = :t"), {"t": tenant_id}
    ).scalar()
    return dict(found) if found is not None else None
