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

from shared.providers.base import ConversationContext
from shared.schemas import Agent, Orchestration, Phase


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
            r"denied|expired|unable)\b"
        ),
        0.5,
    ),
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


@functools.lru_cache(maxsize=256)
def _cue_pattern(cues: tuple[str, ...]) -> re.Pattern[str]:
    """Whole words and phrases, with their inflections ("webhook" meets "webhooks")."""
    alternatives = "|".join(re.escape(cue) for cue in sorted(cues, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?:s|es|d|ed|ing|ion|ions)?(?![\w-])")


def cue_evidence(text: str, cues: tuple[str, ...]) -> float:
    """One for each distinct cue the text holds."""
    return float(len(set(_cue_pattern(cues).findall(text))))


def problem_evidence(text: str, *, question: bool) -> float:
    """A statement with signs of a problem reports one (a bonus of 0.5 on top of the signs);
    a question may only mention one ("what happens when nobody checks in?"), so only
    something that does not happen counts in a question, at half weight."""
    if question:
        negated, weight = PROBLEM_SIGNS[0]
        return 0.5 * weight if negated.search(text) else 0.0
    signs = sum(weight for pattern, weight in PROBLEM_SIGNS if pattern.search(text))
    return signs + 0.5 if signs else 0.0


def _normalised(message: str) -> str:
    text = message.lower().replace("\u2019", "'")  # a typographic apostrophe
    return " ".join(re.findall(r"[a-z0-9][a-z0-9'\-]*", text))


def is_question(message: str) -> bool:
    """Ends with a question mark, or opens like a question and does not end a statement."""
    stripped = message.strip()
    return stripped.endswith("?") or (
        bool(QUESTION_START.match(stripped)) and not stripped.endswith((".", "!"))
    )


def intent_evidence(message: str) -> list[tuple[Intent, float]]:
    """Each intent with the evidence the message holds for it, best first (on a tie, the
    intent listed first)."""
    text, question = _normalised(message), is_question(message)
    scored = []
    for intent in INTENTS:
        evidence = cue_evidence(text, intent.cues)
        if intent is SUPPORT:
            evidence += problem_evidence(text, question=question)
        scored.append((intent, evidence))
    return sorted(scored, key=lambda pair: -pair[1])


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


def next_phase(proposed: Phase, memory: dict[str, Any], message: str) -> Phase:
    """The sales phases move forward only, unless the customer goes back; a side trip
    (support, handoff) is its own phase."""
    if proposed not in RANK:
        return proposed
    furthest = _phase(memory.get("furthest_phase", memory.get("last_phase")), Phase.OPENING)
    if furthest not in RANK or GOING_BACK.search(message):
        return proposed
    return proposed if RANK[proposed] >= RANK[furthest] else furthest


def _continued(context: ConversationContext) -> Orchestration:
    """No evidence in the message: a question about the product goes to the technical
    consultant; otherwise the conversation continues where it was."""
    memory = context.memory
    last_agent = memory.get("last_agent")
    phase = _phase(memory.get("last_phase"), Phase.DISCOVERY)
    if last_agent in {Agent.TECHNICAL_CONSULTANT.value, Agent.SUPPORT.value, Agent.DISCOVERY.value}:
        return Orchestration(
            phase=phase,
            intent="follow_up",
            proposed_agent=Agent(last_agent),
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
    text = _normalised(context.message)
    memory = context.memory
    if cue_evidence(text, OFF_TOPIC_CUES):
        return Orchestration(
            phase=_phase(memory.get("last_phase"), Phase.DISCOVERY),
            intent="off_topic",
            proposed_agent=Agent.ADAPTIVE_RESPONSE,
            confidence=0.7,
        )
    ranked = intent_evidence(context.message)
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


def furthest_phase(memory: dict[str, Any], phase: str | None) -> str | None:
    """The furthest sales phase the conversation has reached, with this turn's."""
    earlier = _phase(memory.get("furthest_phase"), Phase.OPENING)
    current = _phase(phase, Phase.OPENING)
    if current not in RANK:
        return earlier.value if "furthest_phase" in memory else None
    return max((earlier, current), key=lambda p: RANK.get(p, 0)).value


def evidence_table(message: str) -> Sequence[tuple[str, float]]:
    """Each intent's evidence for a message (for explaining a decision)."""
    return [(intent.name, evidence) for intent, evidence in intent_evidence(message)]
