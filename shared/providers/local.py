"""Offline providers: deterministic, no network, no download.

- ``LocalChatModel`` classifies a turn from the message and the conversation memory
  (``shared/providers/intent.py``), and composes agent replies from the research hits.
- ``PatternFacts`` reads the customer's facts from a message with patterns
  (``shared/customer_facts.py``).
- ``LocalEmbedder`` hashes words, word pairs and character trigrams into 384 dimensions.
- ``LocalReranker`` scores how much of the question's meaning a passage covers.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from wordfreq import zipf_frequency

from shared.customer_facts import (
    INVITES_QUESTIONS,
    acknowledgement,
    discovery_question,
    facts_in,
    merged_facts,
    questions_in,
)
from shared.providers.base import ConversationContext, ReplyRequest, Usage
from shared.providers.intent import classify, is_question
from shared.schemas import (
    Agent,
    ConversationMemory,
    CustomerFacts,
    KbLevel,
    Orchestration,
    ResearchHit,
)
from shared.synonyms import equivalent_stems
from shared.text import STOPWORDS, content_terms, count_tokens, light_stem, stem, words

# --------------------------------------------------------------------------- classifier
# The offline orchestrator lives in shared/providers/intent.py (``classify``).


# --------------------------------------------------------------------------- responder


# A sentence that leans on the one before it ("It keeps invoices...") reads as a fragment
# on its own.
_LEANS_BACK = re.compile(
    r"^(?:it|its|this|these|that|those|they|their|them|he|she|such|also|then)\b", re.IGNORECASE
)


@functools.lru_cache(maxsize=4096)
def _sentences_and_terms(passage: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """A passage's whole sentences (20 characters or more, ending as a sentence ends, not
    leaning on the one before), each with its content terms: the same knowledge-base chunks
    come back for many turns, so each is analysed once."""
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", passage.replace("\n", " ")):
        sentence = sentence.strip(" -*#")
        if len(sentence) >= 20 and sentence[-1] in ".!?" and not _LEANS_BACK.match(sentence):
            found.append((sentence, frozenset(content_terms(sentence))))
    return tuple(found)


def _heading_path(hit: ResearchHit) -> tuple[str, str]:
    """The heading path the hit's text starts with ("Security > Encryption"), and the text
    after it; no heading path, and the whole text, when it does not start with one."""
    head, sep, rest = hit.text.partition(": ")
    if sep and head.startswith(hit.title) and "\n" not in head:
        return head, rest
    return "", hit.text


def _body(hit: ResearchHit) -> str:
    """The hit's text without the heading path it starts with ("Security > Encryption: ")."""
    return _heading_path(hit)[1]


@functools.lru_cache(maxsize=4096)
def _heading_terms(heading: str, title: str) -> frozenset[str]:
    """The content terms of a section heading below its document's title ("Drivers do not
    receive SMS alerts" in "Troubleshooting > Drivers do not receive SMS alerts"): in a
    troubleshooting document, the symptom its section fixes."""
    return frozenset(content_terms(heading[len(title) :].strip(" >")))


def _best_sentences(
    hits: Sequence[ResearchHit], question: str, limit: int
) -> list[tuple[str, str]]:
    """The sentences of the top hits that share most with the question, each with its
    document's title: those that share more than half as many of its words as the best one
    does (a sentence that only shares "carriers" with "Can we set recurring appointments for
    our regular carriers?" answers something else); a sentence that shares nothing with it
    is used only when none does."""
    wanted = set(content_terms(question))
    sentences: list[tuple[float, int, int, str, str]] = []
    for rank, hit in enumerate(hits[:3]):
        for sentence, terms in _sentences_and_terms(_body(hit)):
            overlap = len(wanted & terms)
            sentences.append((overlap - 0.1 * rank, -len(sentences), overlap, sentence, hit.title))
    sentences.sort(reverse=True)
    best = max((overlap for _, _, overlap, _, _ in sentences), default=0)
    relevant = [
        (s, title) for score, _, overlap, s, title in sentences if score > 0 and 2 * overlap > best
    ]
    return (relevant or [(s, title) for _, _, _, s, title in sentences[:1]])[:limit]


def _fix_steps(hits: Sequence[ResearchHit], problem: str, limit: int) -> list[tuple[str, str]]:
    """For a described problem: the sentence of the top hits that matches it best (a
    section's first sentence with the section's heading), and the sentences that follow it
    in its passage (a troubleshooting section states the symptom, then the fix, in order,
    and the fix rarely repeats the customer's words); the best sentences overall when none
    matches."""
    wanted = set(content_terms(problem))
    best: tuple[float, int, int] | None = None  # (score, hit, sentence)
    for rank, hit in enumerate(hits[:3]):
        # the symptom a section's heading names, which its first sentence fixes
        section = _heading_terms(_heading_path(hit)[0], hit.title)
        for index, (_, terms) in enumerate(_sentences_and_terms(_body(hit))):
            score = len(wanted & (terms | section if index == 0 else terms)) - 0.1 * rank
            if score > 0 and (best is None or score > best[0]):
                best = (score, rank, index)
    if best is None:
        return _best_sentences(hits, problem, limit)
    _, rank, index = best
    hit = hits[rank]
    return [(s, hit.title) for s, _ in _sentences_and_terms(_body(hit))[index : index + limit]]


# A message that only thanks or agrees ("ok thanks", "great, that helps"): nothing was asked,
# and nothing is missing from the documents.
_PLEASANTRIES = frozenset(
    content_terms(
        "great cool perfect sounds good much awesome nice fine alright sure noted understood "
        "cheers appreciated helps helpful brilliant excellent lovely wonderful"
    )
)


# The answer to a message that only thanks or agrees, and the question it ends with when
# nothing else is left to ask.
GLAD_TO_HELP = "Glad to help."
WHAT_ELSE = "What else would you like to know?"


def _only_pleasantries(message: str) -> bool:
    return not is_question(message) and set(content_terms(message)) <= _PLEASANTRIES


def compose_reply(request: ReplyRequest) -> str:
    """The offline agents: a reply in each agent's manner, grounded in the hits."""
    ctx, hits = request.context, request.hits
    used = _best_sentences(hits, ctx.message, 3)
    facts = [sentence for sentence, _ in used]
    titles = ", ".join(dict.fromkeys(title for _, title in used[:2]))
    sources = f" (Source: {titles}.)" if titles else ""
    agent = request.agent
    if agent is Agent.DISCOVERY:
        stated = facts_in(ctx.message)
        known = merged_facts(ctx.memory.facts, stated)  # never ask what was said
        # What the customer just said, heard; then what the documents say, when the message
        # asks for something and they cover it (a sentence that merely shares a word with
        # "we are looking for a timesheet tool" would be noise).
        thanks = _only_pleasantries(ctx.message)  # "ok thanks": nothing asked, nothing said
        asks = is_question(ctx.message) or not (stated or thanks)
        covered = request.kb_information_level is not KbLevel.MISSING and asks
        lead = " ".join([acknowledgement(stated), *(facts[:2] if covered else [])]).strip()
        invited = INVITES_QUESTIONS.search(ctx.message) is not None
        # what was asked before: kept in memory, and read from the recent replies of a
        # conversation whose memory predates that
        asked = (
            []
            if invited
            else [
                *ctx.memory.asked,
                *(key for t in ctx.history for key in questions_in(t.get("reply", ""))),
            ]
        )
        question = discovery_question(known, asked)
        if thanks:
            return f"{GLAD_TO_HELP} {question or WHAT_ELSE}"
        return f"{lead or 'Happy to help you find the right fit.'} {question}".strip()
    if agent is Agent.SUPPORT:
        fix = _fix_steps(hits, ctx.message, 3)
        source = f"(Source: {fix[0][1]}.)" if fix else ""
        steps = "\n".join(f"{i}. {sentence}" for i, (sentence, _) in enumerate(fix, 1))
        tail = (
            ""
            if request.kb_information_level is KbLevel.ACCURATE
            else (
                " If that does not clear it, send me the exact error text and I will open a ticket."
            )
        )
        return f"Sorry about the trouble. Here is what usually fixes it:\n{steps}\n{source}{tail}"
    if agent is Agent.TECHNICAL_CONSULTANT:
        body = " ".join(facts) or "Let me check the details with our engineers."
        return f"{body}{sources} Want me to go deeper on any part of that?"
    if agent is Agent.CONTENT_GENERATOR:
        topics = ", ".join(ctx.memory.topics[-4:]) or "your evaluation"
        bullet_lines = "\n".join(f"- {fact}" for fact in facts[:3])
        return (
            f"Here is a draft you can send:\n\nSubject: Summary of our evaluation\n\n"
            f"Hi,\n\nWe looked at {topics}. Key points:\n{bullet_lines}\n\nBest regards"
        )
    # adaptive_response: never guess. Hand off, ask, or promise a follow-up.
    if "handoff" in request.routing_reason:
        return (
            "Of course. I have asked a member of our team to reach out to you directly; "
            "they will have the full context of this conversation."
        )
    if "off_topic" in request.routing_reason:
        return "I can only help with questions about our product, but I am happy to do that."
    if request.kb_information_level is not KbLevel.MISSING and facts:
        # the knowledge base does say something: never claim it has nothing
        return (
            f"Here is what our documentation says: {' '.join(facts[:2])} Could you tell me a "
            "little more about what you need, so I can point you to the right answer?"
        )
    if _only_pleasantries(ctx.message):
        return f"{GLAD_TO_HELP} {WHAT_ELSE}"
    return (
        "I do not have documented information on that, and I would rather not guess. "
        "I have noted your question and a specialist will follow up with a confirmed "
        "answer. Is there anything else about your setup I should pass along?"
    )


class LocalChatModel:
    name = "local"

    def orchestrate(
        self, *, context: ConversationContext, model: str, usage: Usage, deadline: float
    ) -> Orchestration:
        result = classify(context)
        usage.add(tokens_in=count_tokens(context.message), tokens_out=12)
        return result

    def stream_reply(
        self, *, request: ReplyRequest, usage: Usage, deadline: float
    ) -> Iterator[str]:
        reply = compose_reply(request)
        usage.add(
            tokens_in=count_tokens(request.context.message)
            + sum(count_tokens(h.text) for h in request.hits),
            tokens_out=count_tokens(reply),
        )
        yield from re.findall(r"\S+\s*|\s+", reply)


class PatternFacts:
    """The customer's facts read from the message with patterns: no model call, no usage."""

    name = "local"
    calls_a_model = False

    def extract_facts(
        self,
        *,
        message: str,
        memory: ConversationMemory,
        model: str,
        usage: Usage,
        deadline: float,
    ) -> CustomerFacts:
        return facts_in(message)


# --------------------------------------------------------------------------- embedder


@functools.lru_cache(maxsize=1 << 18)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, 1.0 if (value >> 63) & 1 else -1.0


@functools.lru_cache(maxsize=1 << 16)
def _term_features(term: str) -> tuple[str, tuple[str, ...]]:
    """A stem's word feature and its character-trigram features."""
    padded = f"^{term}$"
    return f"w:{term}", tuple(f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2))


# The embedder's own stemmer: vectors stored for local-hash-384 were computed with it.
_cached_stem = functools.lru_cache(maxsize=1 << 16)(light_stem)


def _embedding_terms(text: str) -> list[str]:
    """The text's content words, light-stemmed, with the stems of a vocabulary that
    repeats remembered."""
    return [_cached_stem(w) for w in words(text) if w not in STOPWORDS and len(w) > 1]


class LocalEmbedder:
    """Feature hashing of stems, stem pairs and character trigrams, L2-normalised.

    Lexical rather than semantic, but deterministic, fast and free of downloads: texts that
    share vocabulary land close together, which is what the offline demo and tests need.
    Hashes of features and stems are cached per process, since vocabularies repeat.
    """

    name = "local"
    model = "local-hash-384"
    dim = 384

    def embed(
        self, texts: Sequence[str], *, usage: Usage | None = None, deadline: float | None = None
    ) -> list[list[float]]:
        if usage is not None:
            usage.add(tokens_in=sum(count_tokens(t) for t in texts))
        return [self._embed_one(text) for text in texts]

    def _embed_one(self, text: str) -> list[float]:
        terms = _embedding_terms(text)
        # Weights per feature: 2 per word, 0.25 per character trigram, 1 per word pair,
        # summed over occurrences (counted per distinct term, in order of first occurrence).
        features: dict[str, float] = {}
        for term, count in Counter(terms).items():
            word, trigrams = _term_features(term)
            features[word] = 2.0 * count
            for trigram in trigrams:
                features[trigram] = features.get(trigram, 0.0) + 0.25 * count
        for (left, right), count in Counter(itertools.pairwise(terms)).items():
            features[f"b:{left}_{right}"] = float(count)
        vector = [0.0] * self.dim
        dim, log = self.dim, math.log
        for feature, weight in features.items():
            index, sign = _bucket(feature, dim)
            vector[index] += sign * (1.0 + log(weight))
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]


# Words that shape a question rather than name what it is about ("how *long* does it take",
# "do you *support* SSO"): a passage that answers need not repeat them.
_SCAFFOLDING_TEXT = """
much many long often kind sort way possible able available support supported work works
use used using happen happens make need exist exists offer offered provide provided
include included includes anything something thing things there
handle handled handles handling nothing nobody none anyone anybody someone somebody everyone
everybody far whole entire even though although
"""
QUESTION_SCAFFOLDING = frozenset(_SCAFFOLDING_TEXT.split())


@functools.lru_cache(maxsize=1 << 16)
def _match_form(word: str) -> str:
    """The Snowball stem, possessive dropped: "user's" ~ "users", "encrypted" ~ "encryption"."""
    return stem(word.removesuffix("'s"))


# "we're", "doesn't", "it's": a contraction's ending, and the bases of "can't", "won't" and
# "shan't" once it is cut off.
_CONTRACTION = re.compile(r"(?:n't|'s|'re|'ve|'ll|'d|'m)$")
_CUT_NEGATIONS = frozenset({"ca", "wo", "sha", "ai"})


def _plain_words(text: str) -> Iterator[str]:
    """The words of a text with contractions undone: "we're" is "we" and "doesn't" is "does"
    (so both are function words, not content), "Lockerly's" is "Lockerly"; a typographic
    apostrophe counts as a plain one."""
    for word in words(text.replace("\u2019", "'")):
        base = _CONTRACTION.sub("", word)
        if base != word and base in _CUT_NEGATIONS:
            continue
        yield base


def _content_parts(text: str, skip: frozenset[str]) -> Iterator[str]:
    """Content words in order; a hyphenated word counts as its parts ("sign-on" is "sign"),
    so a passage that writes "sign-on" meets a question that writes "sign on"."""
    for w in _plain_words(text):
        for part in w.split("-"):
            if part not in STOPWORDS and part not in skip and len(part) > 1:
                yield part


def _rerank_terms(text: str) -> list[str]:
    return [_match_form(part) for part in _content_parts(text, frozenset())]


@functools.lru_cache(maxsize=1 << 16)
def specificity(word: str) -> float:
    """How much a word of a question says about what is asked, from how common it is in
    English (its Zipf frequency in the ``wordfreq`` lists: about 7 for "the", 5 for
    "month", 3 for "kiosk"): (7 - Zipf) / 2, between 0.1 and 2.5. A word those lists do
    not know (a product's name, "webhook", "scim") weighs most. A customer who words a
    question apart from the documents mostly swaps common words ("truck" for "vehicle"),
    while a question about something the documents never name hinges on a rare one
    ("PayPal", "HIPAA"), so a missing rare word counts for more than a missing common one.
    """
    if word.isdigit():
        return 2.5  # a number asked for ("30 days") is what a passage must state
    return min(2.5, max(0.1, (7.0 - zipf_frequency(word, "en")) / 2.0))


def _question_terms(text: str) -> dict[str, float]:
    """The question's content terms (without question scaffolding) in order, each with the
    specificity of the first word that gave it."""
    terms: dict[str, float] = {}
    for part in _content_parts(text, QUESTION_SCAFFOLDING):
        terms.setdefault(_match_form(part), specificity(part))
    return terms


@functools.lru_cache(maxsize=8192)
def _passage_terms(text: str) -> tuple[frozenset[str], str]:
    """A passage's terms, as a set and joined in order: the same knowledge-base chunks come
    back for many questions, so each one is analysed once per process."""
    sequence = _rerank_terms(text)
    return frozenset(sequence), f" {' '.join(sequence)} "


# "Is a dedicated success manager included in the Team plan?": the word before "plan" names
# the plan the question is about.
_PLAN_NOUNS = frozenset({"plan", "plans", "tier", "tiers", "edition", "editions"})
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# A passage that states what a question asks only for another plan than the one it names
# ("Enterprise ... adds a dedicated success manager", asked about the Team plan) answers it
# in part: its score is at most this, below every ACCURATE threshold calibrated so far
# (0.69-0.75 on six knowledge bases) and above every PARTIAL one (0.28-0.40).
OTHER_PLAN_CEILING = 0.6


def _plan_qualifiers(query: str) -> frozenset[str]:
    """The stems of the plans a question names ("team" in "... in the Team plan?")."""
    sequence = list(_content_parts(query, QUESTION_SCAFFOLDING))
    return frozenset(
        _match_form(word)
        for word, following in itertools.pairwise(sequence)
        if following in _PLAN_NOUNS and word not in _PLAN_NOUNS
    )


@functools.lru_cache(maxsize=8192)
def _heading_and_sentences(
    passage: str,
) -> tuple[frozenset[str], tuple[tuple[frozenset[str], bool], ...]]:
    """A passage's heading terms, and each sentence's terms with whether it leans on the
    sentence before it (``_LEANS_BACK``: "It adds single sign-on")."""
    heading, _, body = passage.partition("\n")
    sentences = []
    for sentence in _SENTENCE_END.split(body):
        if words(sentence):
            leans_back = _LEANS_BACK.match(sentence.strip(" -*#")) is not None
            sentences.append((frozenset(_rerank_terms(sentence)), leans_back))
    return frozenset(_rerank_terms(heading)), tuple(sentences)


def _states_it_for_another_plan(
    passage: str, plans: frozenset[str], subject: Sequence[tuple[frozenset[str], float]]
) -> bool:
    """Whether the sentence that best covers the question's subject (its terms but the plan's)
    leaves out the plan asked about, neither the heading nor, for a sentence that refers
    back, the sentence before it naming it."""
    heading, sentences = _heading_and_sentences(passage)
    if not sentences or not plans.isdisjoint(heading):
        return False

    def coverage(index: int) -> tuple[float, bool]:
        terms = sentences[index][0]
        covered = sum(weight for same, weight in subject if not same.isdisjoint(terms))
        return covered, not plans.isdisjoint(terms)

    best = max(range(len(sentences)), key=coverage)
    if coverage(best)[0] == 0.0:
        return False
    terms, refers_back = sentences[best]
    if refers_back and best > 0:
        terms = terms | sentences[best - 1][0]
    return plans.isdisjoint(terms)


def words_not_found(query: str, passage: str) -> list[str]:
    """The question's content words, as the customer wrote them, that the passage holds
    neither as written nor as a word of the same meaning (question scaffolding left out):
    what keeps the passage's score below full coverage."""
    terms = _passage_terms(passage)[0]
    lacking: dict[str, None] = {}
    for word in _content_parts(query, QUESTION_SCAFFOLDING):
        if equivalent_stems(_match_form(word)).isdisjoint(terms):
            lacking.setdefault(word)
    return list(lacking)


class LocalReranker:
    """Coverage of the question's terms by the passage, weighted towards telling terms.

    The score is the weighted share of the question's content terms (without question
    scaffolding such as "how long" or "do you support") that the passage, heading included,
    contains, with a bonus for adjacent pairs; it lies in [0, 1]. A term weighs by its
    rarity among the candidates (one found in none says the knowledge base does not know
    the thing asked about) times its ``specificity`` in English (a missing "PayPal" says
    more than a missing "truck"). A passage holds a term when it holds the word or one the
    customer and the documents use for the same thing ("staff" and "employees";
    ``shared.synonyms``). The level thresholds are calibrated on this score (see
    ``chordline kb calibrate``).
    """

    name = "local"
    # Raised whenever its scores change, so that thresholds calibrated on an earlier
    # revision are known as such (see shared/kb/selfcalibration.py ``scorer_of``).
    revision = 7

    def __init__(self) -> None:
        specificity("the")  # the word lists load now (about 0.1 s), not in a first turn

    def rerank(
        self, *, query: str, documents: Sequence[str], model: str, usage: Usage, deadline: float
    ) -> list[float]:
        usage.add(tokens_in=count_tokens(query) + sum(count_tokens(d) for d in documents))
        specific = _question_terms(query)
        if not specific or not documents:
            return [0.0 for _ in documents]
        terms = list(specific)
        passages = [_passage_terms(doc) for doc in documents]
        # A term is present in a passage that holds it or a word of the same meaning.
        meanings = [(t, equivalent_stems(t)) for t in terms]
        found = [{t for t, same in meanings if not same.isdisjoint(p)} for p, _ in passages]
        # Terms found in every candidate explain little; weight by in-candidate rarity.
        weights = {
            t: (1.0 + math.log((1 + len(documents)) / (1 + sum(t in f for f in found))))
            * specific[t]
            for t in terms
        }
        total = sum(weights.values())
        pairs = [f" {a} {b} " for a, b in itertools.pairwise(terms)]
        plans = _plan_qualifiers(query) & specific.keys()
        subject = [(same, weights[t]) for t, same in meanings if t not in plans]
        scores = []
        for doc, present, (_, joined) in zip(documents, found, passages, strict=True):
            covered = sum(weights[t] for t in present) / total
            pair_bonus = sum(pair in joined for pair in pairs) / len(pairs) if pairs else 0.0
            score = min(1.0, 0.85 * covered + 0.15 * pair_bonus)
            if plans & present and _states_it_for_another_plan(doc, plans, subject):
                score = min(score, OTHER_PLAN_CEILING)
            scores.append(round(score, 4))
        return scores
