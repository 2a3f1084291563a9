"""What chordline asks a chat model: the orchestrator's routing question and the agents' brief.

The orchestrator answers in a strict JSON schema (OpenAI structured output); the agents
answer in free text, grounded in the research hits the turn already holds.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.providers.base import ConversationContext, ReplyRequest
from shared.schemas import Agent, ConversationMemory, CustomerFacts, KbLevel, Phase

HISTORY_TURNS = 6
HIT_CHARS = 1200


class RouteAnswer(BaseModel):
    """The orchestrator's answer, exactly as the schema below asks for it."""

    model_config = ConfigDict(extra="forbid")

    phase: Phase
    intent: str = Field(min_length=1, max_length=64)
    proposed_agent: Agent
    confidence: float = Field(ge=0.0, le=1.0)
    handoff: bool


ROUTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "enum": [p.value for p in Phase]},
        "intent": {
            "type": "string",
            "description": "snake_case label of what the customer wants, e.g. pricing, "
            "technical_question, support_issue, content_request, handoff, off_topic",
        },
        "proposed_agent": {"type": "string", "enum": [a.value for a in Agent]},
        "confidence": {"type": "number", "description": "0 to 1"},
        "handoff": {"type": "boolean", "description": "the customer asks for a human"},
    },
    "required": ["phase", "intent", "proposed_agent", "confidence", "handoff"],
    "additionalProperties": False,
}

ROUTE_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "turn_routing", "strict": True, "schema": ROUTE_SCHEMA},
}

_JSON_TYPES: dict[Any, dict[str, Any]] = {
    str: {"type": ["string", "null"]},
    int: {"type": ["integer", "null"]},
    list[str]: {"type": ["array", "null"], "items": {"type": "string"}},
}
FACT_DESCRIPTIONS = {
    "company": "the customer's company name",
    "sites": "how many sites, warehouses, offices or locations would use the product",
    "people": "how many people (users, staff, seats) would use it",
    "current_tool": "the tool or system they use today",
    "budget": "their budget, as they said it, e.g. $20k a year",
    "timeline": "when they want it running, as they said it, e.g. by Q3",
    "decision_makers": "who decides or weighs in, e.g. CFO, IT team",
    "needs": "what they need the product to do, short phrases",
}


def facts_schema() -> dict[str, Any]:
    """The JSON schema of ``CustomerFacts`` as OpenAI's strict mode wants it: every field
    required, a fact the message does not state is null, nothing else allowed."""
    properties = {}
    for name, hint in typing.get_type_hints(CustomerFacts).items():
        properties[name] = {**_JSON_TYPES[hint], "description": FACT_DESCRIPTIONS[name]}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


FACTS_SCHEMA: dict[str, Any] = facts_schema()
FACTS_SCHEMA_NAME = "customer_facts"
FACTS_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": FACTS_SCHEMA_NAME, "strict": True, "schema": FACTS_SCHEMA},
}
FACTS_SYSTEM = """\
You read one message a prospective customer wrote in a B2B sales conversation and extract
the facts it states about the customer: company, number of sites, number of people, the
tool they use today, what they need, budget, timeline, who decides. Use only what this
message says; set every fact it does not state to null (a list too). Answer with the JSON
object only."""
_FACTS = TypeAdapter(CustomerFacts)


def facts_messages(message: str, memory: ConversationMemory) -> list[dict[str, str]]:
    known = json.dumps(memory.facts) if memory.facts else "nothing yet"
    return [
        {"role": "system", "content": FACTS_SYSTEM},
        {"role": "system", "content": f"Already known about the customer: {known}"},
        {"role": "user", "content": message},
    ]


def facts_answer(content: str) -> CustomerFacts:
    """The facts in a structured-output answer: nulls, empty strings and empty lists mean
    not stated. Raises ``ValueError`` (pydantic's ``ValidationError`` included) when the
    answer is not such an object."""
    data = json.loads(content)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    stated = {
        key: value.strip() if isinstance(value, str) else value
        for key, value in data.items()
        if key in FACTS_SCHEMA["properties"]
    }
    facts = _FACTS.validate_python(
        {key: value for key, value in stated.items() if value not in (None, "", [])},
        strict=True,
    )
    for key in ("needs", "decision_makers"):
        if key in facts:
            items = list(dict.fromkeys(i.strip() for i in facts[key] if i.strip()))
            if items:
                facts[key] = items
            else:
                del facts[key]
    return facts


ORCHESTRATOR_SYSTEM = """\
You route one turn of a B2B sales and support conversation. Decide the conversation's
phase, the customer's intent, and which specialist should answer:
- discovery: understands needs, qualifies, answers pricing and plan questions;
- support: fixes problems of existing customers (errors, outages, access);
- technical_consultant: answers technical questions (API, integrations, security);
- content_generator: writes content the customer asks for (emails, summaries);
- adaptive_response: hand-offs to a human, off-topic messages, anything unclear.
Set handoff to true only when the customer asks for a human. Confidence is how sure you
are of the proposed agent, from 0 to 1. Answer with the JSON object only."""

AGENT_BRIEFS: dict[Agent, str] = {
    Agent.DISCOVERY: "You are the discovery specialist: helpful, curious, and you end with "
    "one question that moves the evaluation forward.",
    Agent.SUPPORT: "You are the support specialist: apologise briefly, then give numbered "
    "steps that fix the problem.",
    Agent.TECHNICAL_CONSULTANT: "You are the technical consultant: precise and concrete, "
    "citing the documentation you were given.",
    Agent.CONTENT_GENERATOR: "You write the content the customer asked for, ready to send.",
    Agent.ADAPTIVE_RESPONSE: "You handle hand-offs, off-topic messages and questions the "
    "documentation does not answer: never guess; promise a follow-up by the team instead.",
}

LEVEL_GUIDANCE: dict[KbLevel, str] = {
    KbLevel.ACCURATE: "The documentation below answers the question: answer from it.",
    KbLevel.PARTIAL: "The documentation below covers the question only in part: say what it "
    "covers and that the team will confirm the rest.",
    KbLevel.MISSING: "The documentation does not cover this question: do not invent facts.",
}


def _history_messages(context: ConversationContext) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for exchange in context.history[-HISTORY_TURNS:]:
        messages.append({"role": "user", "content": exchange.get("message", "")})
        if exchange.get("reply"):
            messages.append({"role": "assistant", "content": exchange["reply"]})
    return messages


def orchestrator_messages(context: ConversationContext) -> list[dict[str, str]]:
    state = {
        "qualification_status": context.qualification_status.value,
        "memory": context.memory.to_stored(),
    }
    return [
        {"role": "system", "content": ORCHESTRATOR_SYSTEM},
        {"role": "system", "content": "Conversation state: " + json.dumps(state, default=str)},
        *_history_messages(context),
        {"role": "user", "content": context.message},
    ]


def agent_messages(request: ReplyRequest) -> list[dict[str, str]]:
    sources = "\n\n".join(
        f"[{n}] {hit.title}\n{hit.text[:HIT_CHARS]}" for n, hit in enumerate(request.hits, 1)
    )
    brief = "\n".join(
        (
            AGENT_BRIEFS[request.agent],
            LEVEL_GUIDANCE[request.kb_information_level],
            f"Why you were chosen: {request.routing_reason}",
            "Keep the answer short: a few sentences.",
        )
    )
    messages = [{"role": "system", "content": brief}]
    if known := request.context.memory.facts:
        # the qualification record so far: discovery never asks for what it holds
        messages.append(
            {
                "role": "system",
                "content": "What the customer already told us (never ask for it again): "
                + json.dumps(known),
            }
        )
    if sources:
        messages.append({"role": "system", "content": "Documentation:\n\n" + sources})
    return [
        *messages,
        *_history_messages(request.context),
        {"role": "user", "content": request.context.message},
    ]
