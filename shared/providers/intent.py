"""The offline orchestrator: intent, phase and a confidence from the message and the memory.

Intents are scored, not looked up: cue words and phrases (whole words, with their
inflections: "integrate" meets "integrates"), and for support the shape of a described
problem, which rarely names itself: something that does not happen ("reminders are not
arriving", "nothing happens"), stopped or keeps happening, since some moment ("since this
morning"), or a symptom ("stuck", "pending", "missing"). A question about the product with
no cue at all goes to technical_consultant, at a modest confidence: the merge still sends it
to adaptive_response when the knowledge base has nothing on it.

The confidence says how much the message itself decided: it grows with the evidence for the
winning intent and shrinks with the evidence for the runner-up, from 0.35 (a tie) to 0.95. A
message with no evidence continues the conversation from memory (0.5) or, with nothing to go
on, asks (0.3, below the merge's 0.35, so adaptive_response asks a clarifying question).

The phase moves forward along the sales conversation (opening, discovery, qualification,
technical evaluation, content, closing) and never back unless the customer goes back
("back to pricing", "again"); support and handoff are side trips, after which the
conversation resumes from the furthest phase it had reached (``furthest_phase`` in memory).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.customer_facts import INVITATIONS
from shared.providers.base import ConversationContext
from shared.schemas import Agent, ConversationMemory, Orchestration, Phase


@dataclass(frozen=True)
class Intent:
    name: str
    phase: Phase
    agent: Agent
    cues: tuple[str, ...]


# On equal evidence, the earlier intent wins: a message asking for a human is a handoff even
# if it also mentions an error.
INTENTS: tuple[Intent, ...] = (
    Intent(
        "handoff",
        Phase.HANDOFF,
        Agent.ADAPTIVE_RESPONSE,
        (
            "human",
            "real person",
            "representative",
            "someone from your team",
            "someone from your sales team",
            "call me",
            "account manager",
            "sales rep",
            "talk to someone",
            "speak to someone",
            "speak with",
            "speak to a",
            "talk to a",
        ),
    ),
    Intent(
        "content_request",
        Phase.CONTENT,
        Agent.CONTENT_GENERATOR,
        (
            "write",
            "draft",
            "email",
            "summary",
            "summarize",
            "summarise",
            "one-pager",
            "proposal",
            "blog post",
            "brief",
            "deck",
        ),
    ),
    Intent(
        "support_issue",
        Phase.SUPPORT,
        Agent.SUPPORT,
        (
            "error",
            "broken",
            "not working",
            "stopped",
            "fail",
            "bug",
            "problem",
            "issue",
            "crash",
            "outage",
            "locked out",
            "reset",
            "troubleshoot",
            "doesn't work",
            "isn't working",
            "does not work",
            "won't",
            "glitch",
            # asking what to do about something is asking for help with it
            "what should i do",
            "what should we do",
            "what do i do",
            "what do we do",
            "what now",
            "how do i fix",
            "how do we fix",
            "how can i fix",
            "how can we fix",
        ),
    ),
    Intent(
        "technical_question",
        Phase.TECHNICAL_EVALUATION,
        Agent.TECHNICAL_CONSULTANT,
        (
            "api",
            "webhook",
            "integrate",
            "integration",
            "connect",
            "sync",
            "sso",
            "single sign-on",
            "saml",
            "scim",
            "oauth",
            "security",
            "encrypt",
            "encryption",
            "deploy",
            "on-prem",
            "on-premise",
            "sdk",
            "architecture",
            "latency",
            "rate limit",
            "export",
            "import",
            "erp",
            "sap",
            "rfc",
            "compliance",
            "compliant",
            "soc 2",
            "gdpr",
            "hipaa",
            "iso",
            "uptime",
            "sla",
            "scale",
            "scaling",
            "data residency",
            "hosted",
            "hosting",
            "self-host",
            "backup",
            "retention",
            "provisioning",
        ),
    ),
    Intent(
        "pricing",
        Phase.QUALIFICATION,
        Agent.DISCOVERY,
        (
            "price",
            "pricing",
            "cost",
            "plan",
            "trial",
            "demo",
            "license",
            "licensing",
            "seat",
            "budget",
            "quote",
            "discount",
            "how much",
            "pay",
            "paid",
            "payment",
            "billing",
            "billed",
            "invoice",
            "credit card",
            "subscription",
            "cancel",
            "contract",
        ),
    ),
    Intent(
        "exploring",
        Phase.DISCOVERY,
        Agent.DISCOVERY,
        (
            "looking for",
            "looking at",
            "evaluating",
            "interested",
            "we run",
            "we are",
            "our team",
            "we have",
            "we use",
            "compare",
            "replace",
            "options",
            "hello",
            "hi",
            "how many employees",
            "how many users",
            "how many people",
            "suitable",
            "suit",
            "right for",
            "fit for",
            *INVITATIONS,  # the customer asks to be asked
        ),
    ),
)
OFF_TOPIC_CUES = ("weather", "joke", "football", "recipe", "movie", "horoscope")
SUPPORT = next(i for i in INTENTS if i.name == "support_issue")
TECHNICAL = next(i for i in INTENTS if i.name == "technical_question")

# The shape of a described problem, with the evidence each kind of sign adds.
PROBLEM_SIGNS: tuple[tuple[re.Pattern[str], float], ...] = (
    # something that does not (or no longer) happen: "are not uploading", "won't scan"
    (
        re.compile(
            r"\b(?:not|no longer|never|cannot|can't|won't|doesn't|don't|didn't|isn't|aren't|"
            r"wasn't|weren't|hasn't|haven't)\b(?:\s+\w+){0,2}?\s+\w+(?:ing|ed|en)\b"
            r"|\b(?:will not|won't|doesn't|does not|can't|cannot|did not|didn't|no longer)\s+\w+"
        ),
        1.0,
    ),
    (re.compile(r"\b(?:nothing|nobody|no one|none of)\b"), 0.75),
    (
        re.compile(
            r"\b(?:since (?:this|last|yesterday|monday|tuesday|wednesday|thursday|"
            r"friday|saturday|sunday|the update|we|today)|suddenly|anymore|all of a sudden)\b"
        ),
        0.75,
    ),
    (re.compile(r"\b(?:keeps|kept|still|again and again)\b"), 0.5),
    (
        re.compile(
            r"\b(?:stuck|pending|missing|disappeared|blank|frozen|freezes|slow|wrong|"
            r"empty|zero|spinning|timed out|times out|lost|duplicated|twice|invalid|"
            r"denied|expired|unable|forgot|forgotten|vanished|damaged|cracked|jammed|jams|bent|"
            r"stolen|drained)\b"
        ),
        0.5,
    ),
)
# All the signs in one pattern, so a statement is scanned once; the group names which.
ANY_PROBLEM_SIGN = re.compile(
    "|".join(f"(?P<s{i}>{pattern.pattern})" for i, (pattern, _) in enumerate(PROBLEM_SIGNS))
)
QUESTION_START = re.compile(
    r"^\s*(?:how|what|which|where|when|who|why|is|are|does|do|can|could|will|would|should|"
    r"has|have|did)\b",
    re.IGNORECASE,
)
GOING_BACK = re.compile(
    r"\b(?:go(?:ing)? back to|back to|revisit|start over|once more about|again about)\b",
    re.IGNORECASE,
)

# The sales conversation, in order; support and handoff are side trips.
SALES_ORDER = (
    Phase.OPENING,
    Phase.DISCOVERY,
    Phase.QUALIFICATION,
    Phase.TECHNICAL_EVALUATION,
    Phase.CONTENT,
    Phase.CLOSING,
)
RANK = {phase: i for i, phase in enumerate(SALES_ORDER)}


OFF_TOPIC = "off_topic"
# Every cue once, with the intents (or off_topic) it speaks for.
CUE_OWNERS: dict[str, frozenset[str]] = {}
for _owner, _cues in [*((i.name, i.cues) for i in INTENTS), (OFF_TOPIC, OFF_TOPIC_CUES)]:
    for _cue in _cues:
        CUE_OWNERS[_cue] = CUE_OWNERS.get(_cue, frozenset()) | {_owner}
# One pass over the message finds every cue: whole words and phrases, with their
# inflections ("webhook" meets "webhooks").
CUES = re.compile(
    r"(?<![\w-])("
    + "|".join(re.escape(cue) for cue in sorted(CUE_OWNERS, key=len, reverse=True))
    + r")(?:s|es|d|ed|ing|ion|ions)?(?![\w-])"
)
_WORDS = re.compile(r"[a-z0-9][a-z0-9'\-]*")


def cue_evidence(text: str) -> dict[str, float]:
    """Per intent (and off_topic), one for each distinct cue of it the text holds."""
    evidence: dict[str, float] = {}
    for cue in set(CUES.findall(text)):
        for owner in CUE_OWNERS[cue]:
            evidence[owner] = evidence.get(owner, 0.0) + 1.0
    return evidence


def problem_evidence(text: str, *, question: bool) -> float:
    """A statement with signs of a problem reports one (a bonus of 0.5 on top of the signs);
    a question may only mention one ("what happens when nobody checks in?"), so only
    something that does not happen counts in a question, at half weight."""
    if question:
        negated, weight = PROBLEM_SIGNS[0]
        return 0.5 * weight if negated.search(text) else 0.0
    found = {m.lastgroup for m in ANY_PROBLEM_SIGN.finditer(text)}
    signs = sum(weight for i, (_, weight) in enumerate(PROBLEM_SIGNS) if f"s{i}" in found)
    return signs + 0.5 if signs else 0.0


def _normalised(message: str) -> str:
    text = message.lower().replace("\u2019", "'")  # a typographic apostrophe
    return " ".join(_WORDS.findall(text))


def is_question(message: str) -> bool:
    """Ends with a question mark, or opens like a question and does not end a statement."""
    stripped = message.strip()
    return stripped.endswith("?") or (
        bool(QUESTION_START.match(stripped)) and not stripped.endswith((".", "!"))
    )


@functools.lru_cache(maxsize=4096)
def message_evidence(message: str) -> tuple[bool, tuple[tuple[Intent, float], ...]]:
    """Whether the message is off topic, and each intent with the evidence the message
    holds for it, best first (on a tie, the intent listed first). Kept per message: the same
    messages come back (retries, re-drives, the researcher's gate)."""
    text = _normalised(message)
    cues = cue_evidence(text)
    scored = []
    for intent in INTENTS:
        evidence = cues.get(intent.name, 0.0)
        if intent is SUPPORT:
            evidence += problem_evidence(text, question=is_question(message))
        scored.append((intent, evidence))
    return OFF_TOPIC in cues, tuple(sorted(scored, key=lambda pair: -pair[1]))


def intent_evidence(message: str) -> list[tuple[Intent, float]]:
    return list(message_evidence(message)[1])


def confidence_for(best: float, runner_up: float) -> float:
    """0.35 on a tie, rising with the winner's evidence and its lead, at most 0.95."""
    if best <= 0:
        return 0.3
    lead = (best - runner_up) / best
    return round(min(0.95, 0.35 + 0.6 * lead * (1 - math.exp(-1.2 * best))), 2)


def _phase(value: Any, default: Phase) -> Phase:
    try:
        return Phase(value)
    except ValueError:
        return default


def next_phase(proposed: Phase, memory: ConversationMemory, message: str) -> Phase:
    """The sales phases move forward only, unless the customer goes back; a side trip
    (support, handoff) is its own phase."""
    if proposed not in RANK:
        return proposed
    furthest = memory.furthest_phase or memory.last_phase or Phase.OPENING
    if furthest not in RANK or GOING_BACK.search(message):
        return proposed
    return proposed if RANK[proposed] >= RANK[furthest] else furthest


def _continued(context: ConversationContext) -> Orchestration:
    """No evidence in the message: a question about the product goes to the technical
    consultant; otherwise the conversation continues where it was."""
    memory = context.memory
    last_agent = memory.last_agent
    phase = memory.last_phase or Phase.DISCOVERY
    if last_agent in {Agent.TECHNICAL_CONSULTANT, Agent.SUPPORT, Agent.DISCOVERY}:
        return Orchestration(
            phase=phase,
            intent="follow_up",
            proposed_agent=last_agent,
            confidence=0.5,
        )
    if is_question(context.message):
        return Orchestration(
            phase=next_phase(TECHNICAL.phase, memory, context.message),
            intent="product_question",
            proposed_agent=Agent.TECHNICAL_CONSULTANT,
            confidence=0.5,
        )
    return Orchestration(
        phase=phase, intent="unclear", proposed_agent=Agent.ADAPTIVE_RESPONSE, confidence=0.3
    )


def classify(context: ConversationContext) -> Orchestration:
    """Phase, intent, proposed agent, confidence and handoff, from message and memory."""
    memory = context.memory
    off_topic, ranked = message_evidence(context.message)
    if off_topic:
        return Orchestration(
            phase=memory.last_phase or Phase.DISCOVERY,
            intent="off_topic",
            proposed_agent=Agent.ADAPTIVE_RESPONSE,
            confidence=0.7,
        )
    (intent, best), (_, runner_up) = ranked[0], ranked[1]
    if best <= 0:
        return _continued(context)
    return Orchestration(
        phase=next_phase(intent.phase, memory, context.message),
        intent=intent.name,
        proposed_agent=intent.agent,
        confidence=confidence_for(best, runner_up),
        handoff=intent.name == "handoff",
    )


def furthest_phase(memory: ConversationMemory, phase: str | None) -> Phase | None:
    """The furthest sales phase the conversation has reached, with this turn's."""
    current = _phase(phase, Phase.OPENING)
    if current not in RANK:  # a side trip: the furthest phase stays what it was
        return memory.furthest_phase
    earlier = memory.furthest_phase or Phase.OPENING
    return max((earlier, current), key=lambda p: RANK.get(p, 0))


def evidence_table(message: str) -> Sequence[tuple[str, float]]:
    """Each intent's evidence for a message (for explaining a decision)."""
    return [(intent.name, evidence) for intent, evidence in intent_evidence(message)]
