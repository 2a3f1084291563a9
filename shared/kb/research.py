"""What a tenant's knowledge base says about a question: embed it, search (tenant-filtered,
hybrid), rerank each part of it, and grade the coverage (ACCURATE, PARTIAL, MISSING).

The researcher stage runs it for every turn; calibration, evaluation and re-scoring run the
same function, so what they measure is what turns get.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import get_settings
from shared.db.direct import direct_connection
from shared.errors import ChordlineError
from shared.kb.focus import question_focus
from shared.kb.levels import level_of_parts, question_parts
from shared.kb.search import Candidate, hybrid_search
from shared.kb.stores import store_for
from shared.providers.base import ConversationContext, Usage
from shared.providers.intent import classify
from shared.providers.registry import get_providers
from shared.schemas import KbLevel, Research, ResearchHit, TenantSettings


def research_question(
    *, tenant_id: str, question: str, settings: TenantSettings, usage: Usage, deadline: float
) -> Research:
    """Embed, search (tenant-filtered hybrid), rerank, and grade the coverage."""
    scored = scored_candidates(
        tenant_id=tenant_id, question=question, settings=settings, usage=usage, deadline=deadline
    )
    if scored is None:
        return Research(hits=[], kb_information_level=KbLevel.MISSING, reason="no candidates")
    tops = scored.part_tops
    return Research(
        hits=scored.hits(settings.top_k),
        kb_information_level=level_of_parts(tops, settings.thresholds),
        parts=list(zip(scored.parts, tops, strict=True)) if len(tops) > 1 else [],
    )


@dataclass(frozen=True)
class ScoredCandidates:
    """The candidates of a question, with the reranked score of each for each part of the
    question (one part for most questions)."""

    candidates: list[Candidate]
    part_scores: list[list[float]]  # per part, per candidate
    parts: list[str]

    @property
    def part_tops(self) -> list[float]:
        return [max(scores, default=0.0) for scores in self.part_scores]

    def hits(self, top_k: int) -> list[ResearchHit]:
        """The best passage of each part first, then the rest by their best score; a
        passage whose text an earlier hit already has (the same text stored twice) is left
        out, so it never takes two of the ``top_k`` places."""
        best = [max(scores) for scores in zip(*self.part_scores, strict=True)]
        by_score = sorted(range(len(self.candidates)), key=lambda i: best[i], reverse=True)
        part_leaders = [
            max(range(len(scores)), key=lambda i: scores[i]) for scores in self.part_scores
        ]
        hits: list[ResearchHit] = []
        seen: set[str] = set()
        for index in dict.fromkeys([*part_leaders, *by_score]):
            c = self.candidates[index]
            text = (f"{c.heading}: " if c.heading else "") + c.text
            if text in seen:
                continue
            seen.add(text)
            hits.append(
                ResearchHit(
                    chunk_id=c.chunk_id,
                    document_id=c.document_id,
                    title=c.title,
                    text=text,
                    score=best[index],
                    vector_rank=c.vector_rank,
                    text_rank=c.text_rank,
                )
            )
            if len(hits) == top_k:
                break
        return hits


def scored_candidates(
    *,
    tenant_id: str,
    question: str,
    settings: TenantSettings,
    usage: Usage,
    deadline: float,
    vector: list[float] | None = None,
) -> ScoredCandidates | None:
    """One embedding (unless ``vector`` is the question's focus, embedded in a batch) and
    one search for the question's focus; one rerank per part of it (a question with one
    part, the usual case, is reranked once). None without candidates."""
    question = question_focus(question)
    providers = get_providers()
    kb = get_settings().kb
    if vector is None:
        vector = providers.embedder.embed([question], usage=usage, deadline=deadline)[0]
    with direct_connection() as conn:
        candidates = hybrid_search(
            conn,
            tenant_id=tenant_id,
            question=question,
            vector=vector,
            limit=settings.candidates,
            exact_below=kb.exact_search_below,
            ef_search=kb.ef_search,
            store=store_for(providers.embedder),
        )
    if not candidates:
        return None
    passages = [c.passage for c in candidates]
    parts = question_parts(question)
    part_scores = [
        providers.reranker.rerank(
            query=part,
            documents=passages,
            model=settings.models.rerank,
            usage=usage,
            deadline=deadline,
        )
        for part in parts
    ]
    return ScoredCandidates(candidates, part_scores, parts)


def words_the_best_passage_lacks(question: str, hits: list[ResearchHit]) -> list[str] | None:
    """With the offline reranker, the words of the question's focus that the top passage
    holds neither as written nor as a word of the same meaning: why it scored below full
    coverage. None with another reranker, or without a passage."""
    from shared.providers.local import LocalReranker, words_not_found

    if getattr(get_providers().reranker, "name", None) != LocalReranker.name or not hits:
        return None
    return words_not_found(question_focus(question), hits[0].text)


# What the researcher gate skips (a tenant with researcher_gate = gated): turns whose cheap
# intent needs no knowledge base. The live stage and re-scoring both decide with these.
GATE_SKIPS = frozenset({"handoff", "off_topic"})
GATE_SKIPPED = "skipped by the researcher gate"


def gate_skips(*, message: str, tenant_id: str, settings: TenantSettings) -> bool:
    """Whether the tenant's researcher gate skips retrieval for this message."""
    if settings.researcher_gate != "gated":
        return False
    quick = ConversationContext(tenant_id=tenant_id, message=message)
    return classify(quick).intent in GATE_SKIPS


def skipped_research() -> Research:
    return Research(hits=[], kb_information_level=KbLevel.MISSING, reason=GATE_SKIPPED)


def failed_research(exc: ChordlineError) -> Research:
    """Retrieval failed: the turn goes on as if the knowledge base had nothing, marked so."""
    return Research(
        hits=[],
        kb_information_level=KbLevel.MISSING,
        retrieval_failed=True,
        reason=f"retrieval failed: {exc}"[:500],
    )
