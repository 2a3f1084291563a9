"""The offline orchestrator reads intent without exact keywords, gives a confidence that
follows the evidence, moves the phase forward, and memory keeps facts about the customer."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import pytest

from shared.customer_facts import facts_in, questions_in
from shared.db.turns import TurnRecord
from shared.providers.base import ConversationContext, ReplyRequest
from shared.providers.intent import classify, confidence_for
from shared.providers.local import compose_reply
from shared.schemas import Agent, ConversationMemory, KbLevel, Phase, ResearchHit
from shared.turn.agents import updated_memory


def ctx(
    message: str, memory: ConversationMemory | dict[str, Any] | None = None
) -> ConversationContext:
    if not isinstance(memory, ConversationMemory):
        memory = ConversationMemory.from_stored(memory or {})
    return ConversationContext(tenant_id="t", message=message, memory=memory)


@pytest.mark.parametrize(
    "message",
    [
        "Since this morning the app keeps showing Sync pending and check-ins are not uploading",
        "When I tap the check-in button nothing happens.",
        "Nobody on the night shift got a reminder this week.",
        "The dashboard has been stuck on loading since yesterday.",
        "Our invoices no longer show up in the accounting system.",
        # asking what to do about something, and symptoms named by one word
        "The kiosk printer jams every morning, what should we do?",
        "The screen on our kiosk is cracked. What now?",
        "Our tablet is stuck on the loading screen, what should I do?",
        "One of our drivers forgot her PIN.",
        "My booking vanished from the app.",
    ],
)
def test_a_described_problem_is_a_support_turn(message: str) -> None:
    result = classify(ctx(message))
    assert result.proposed_agent is Agent.SUPPORT, result
    assert result.confidence >= 0.5  # the merge keeps it (above 0.35)


@pytest.mark.parametrize(
    "message",
    [
        "How long do you keep booking history?",
        "What happens to a booking when nobody checks in?",
        "Does it integrate with Xero?",
    ],
)
def test_a_question_that_mentions_no_problem_is_not_a_support_turn(message: str) -> None:
    assert classify(ctx(message)).proposed_agent is not Agent.SUPPORT


def test_a_product_question_without_a_cue_goes_to_the_technical_consultant() -> None:
    result = classify(ctx("How quickly does a booking show up on the map?"))
    assert (result.proposed_agent, result.intent) == (
        Agent.TECHNICAL_CONSULTANT,
        "product_question",
    )
    assert 0.35 < result.confidence < 0.6


def test_confidence_follows_the_evidence() -> None:
    assert confidence_for(0, 0) < 0.35  # nothing to go on: ask
    assert confidence_for(1, 1) == 0.35  # a tie decides nothing
    assert confidence_for(1, 0) < confidence_for(2, 0) < confidence_for(3, 0) <= 0.95
    assert confidence_for(2, 1) < confidence_for(2, 0)
    pure = classify(ctx("Do you have a REST API, webhooks and an SDK?")).confidence
    mixed = classify(ctx("Do you have a REST API, and what does the plan cost?")).confidence
    assert mixed < pure


def test_the_phase_moves_forward_unless_the_customer_goes_back() -> None:
    evaluating = {"last_phase": "technical_evaluation", "furthest_phase": "technical_evaluation"}
    pricing = classify(ctx("How much does the Growth plan cost?", evaluating))
    assert pricing.proposed_agent is Agent.DISCOVERY
    assert pricing.phase is Phase.TECHNICAL_EVALUATION  # not back to qualification
    back = classify(ctx("Let's go back to pricing: how much is the Growth plan?", evaluating))
    assert back.phase is Phase.QUALIFICATION
    after_support = {"last_phase": "support", "furthest_phase": "technical_evaluation"}
    assert classify(ctx("Do you have webhooks?", after_support)).phase is (
        Phase.TECHNICAL_EVALUATION
    )
    after_adaptive = {"last_phase": "qualification", "last_agent": "adaptive_response"}
    assert classify(ctx("hmm ok", after_adaptive)).phase is Phase.QUALIFICATION


def test_facts_about_the_customer_are_read_from_what_they_say() -> None:
    assert facts_in("We run three warehouses with 40 people and we use spreadsheets today.") == {
        "sites": 3,
        "people": 40,
        "current_tool": "spreadsheets",
    }
    assert facts_in("Our budget is $20k a year and we want it live by Q3.") == {
        "budget": "$20k a year",
        "timeline": "by Q3",
    }


@pytest.mark.parametrize(
    ("message", "facts"),
    [
        (
            "Our budget is around 1000 dollars a month and we want to decide by end of March.",
            {"budget": "around 1000 dollars a month", "timeline": "by end of March"},
        ),
        ("We can spend about €500 per month.", {"budget": "about €500 per month"}),
        ("Our budget is 5000.", {"budget": "5000"}),
        (
            "We are Acme Builders, about 40 people across 3 sites.",
            {"company": "Acme Builders", "people": 40, "sites": 3},
        ),
        # a count is not money, and "we are" followed by a description is not a name
        ("We need up to 40 users.", {"people": 40, "needs": ["up to 40 users"]}),
        ("We are GDPR compliant and we could pay 300 a month.", {}),
    ],
)
def test_budget_and_company_are_read_as_customers_say_them(
    message: str, facts: dict[str, object]
) -> None:
    assert facts_in(message) == facts


def _turn(message: str, phase: str) -> TurnRecord:
    return cast(TurnRecord, SimpleNamespace(message=message, phase=phase, intent="x"))


def test_discovery_never_asks_for_a_fact_memory_holds() -> None:
    memory = updated_memory(
        ConversationMemory(),
        _turn("Hi, we run three warehouses with 40 people and use spreadsheets.", "discovery"),
        Agent.DISCOVERY,
        None,
    )
    assert memory.facts == {"sites": 3, "people": 40, "current_tool": "spreadsheets"}
    assert memory.furthest_phase == "discovery"
    reply = compose_reply(
        ReplyRequest(
            agent=Agent.DISCOVERY,
            context=ctx("How much does the Growth plan cost?", memory),
            hits=[],
            kb_information_level=KbLevel.ACCURATE,
            routing_reason="discovery as proposed",
            model="local",
        )
    ).lower()
    assert "how many" not in reply and "using today" not in reply
    assert "when would you like" in reply  # it asks for what it does not know yet


@pytest.mark.parametrize("level", [KbLevel.PARTIAL, KbLevel.ACCURATE])
def test_adaptive_response_never_says_the_knowledge_base_has_nothing_when_it_has(
    level: KbLevel,
) -> None:
    hit = ResearchHit(
        chunk_id=1,
        document_id="d",
        title="Troubleshooting",
        text="Sync pending: check-ins wait on the phone until the connection is back.",
        score=0.5,
    )
    request = ReplyRequest(
        agent=Agent.ADAPTIVE_RESPONSE,
        context=ctx("The app shows Sync pending"),
        hits=[hit],
        kb_information_level=level,
        routing_reason="orchestrator confidence 0.30 below 0.35: adaptive_response asks",
        model="local",
    )
    reply = compose_reply(request)
    assert "do not have documented information" not in reply
    assert "check-ins wait on the phone" in reply
    missing = compose_reply(
        ReplyRequest(**{**request.__dict__, "kb_information_level": KbLevel.MISSING})
    )
    assert "do not have documented information" in missing


def _hit(title: str, text: str) -> ResearchHit:
    return ResearchHit(chunk_id=1, document_id="d", title=title, text=text, score=0.9)


def _offline_reply(
    agent: Agent,
    message: str,
    hits: list[ResearchHit],
    level: KbLevel = KbLevel.ACCURATE,
    memory: ConversationMemory | dict[str, Any] | None = None,
) -> str:
    """The offline agent's reply, routed as proposed."""
    return compose_reply(
        ReplyRequest(
            agent=agent,
            context=ctx(message, memory),
            hits=hits,
            kb_information_level=level,
            routing_reason=f"{agent.value} as proposed",
            model="local",
        )
    )


def test_offline_replies_read_as_sentences_from_the_documents() -> None:
    hits = [
        _hit(
            "Security",
            "Security > Encryption: We use AES-256 encryption for data at rest and TLS 1.3 in "
            "transit. It also covers backups, which are taken every night.",
        ),
        _hit(
            "Integrations", "Integrations > Accounting: Tallyway connects to Xero and QuickBooks."
        ),
    ]
    reply = _offline_reply(Agent.TECHNICAL_CONSULTANT, "Is my data encrypted at rest?", hits)
    assert reply.startswith("We use AES-256 encryption for data at rest")  # no breadcrumb
    assert " > " not in reply and "It also covers" not in reply  # no fragment leaning back
    assert "Xero" not in reply  # nothing that has no bearing on the question
    assert "(Source: Security.)" in reply


def test_the_qualification_record_holds_company_needs_and_who_decides() -> None:
    memory = updated_memory(
        ConversationMemory(),
        _turn(
            "Hi, I am the ops lead at Brightwater Logistics and we need barcode scanning "
            "for returns.",
            "discovery",
        ),
        Agent.DISCOVERY,
        None,
    )
    memory = updated_memory(
        memory,
        _turn("We run 12 stores; our CFO and the IT team will decide by Q3.", "qualification"),
        Agent.DISCOVERY,
        None,
    )
    assert memory.facts == {
        "company": "Brightwater Logistics",
        "needs": ["barcode scanning for returns"],
        "sites": 12,
        "decision_makers": ["CFO", "IT team"],
        "timeline": "by Q3",
    }
    more = updated_memory(
        memory, _turn("Our finance director signs off too.", "qualification"), Agent.DISCOVERY, None
    )
    assert more.facts["decision_makers"] == ["CFO", "IT team", "finance director"]


def _discovery_reply(
    message: str, level: KbLevel, memory: ConversationMemory | dict[str, Any]
) -> str:
    hits = [
        _hit("Integrations", "Slack reminders tell people to submit their timesheet."),
        _hit("Pricing", "Team costs $25 per user per month with unlimited projects."),
    ]
    return _offline_reply(Agent.DISCOVERY, message, hits, level, memory)


def test_discovery_says_back_what_it_was_told_and_asks_for_what_it_does_not_know() -> None:
    memory = ConversationMemory(facts={"sites": 3, "people": 40, "current_tool": "paper"})
    reply = _discovery_reply(
        "Our budget is around 1000 dollars a month and we want to decide by end of March.",
        KbLevel.MISSING,
        memory,
    )
    assert reply.startswith(
        "Thanks, noted: a budget of around 1000 dollars a month, by end of March."
    )
    assert "budget do you have" not in reply and "when would you like" not in reply
    assert "who else will weigh in on the decision?" in reply
    # the documents do not cover the message: no sentence of theirs that merely shares a word
    assert "Slack" not in reply and "$25" not in reply


def test_discovery_answers_from_the_documents_when_they_cover_the_question() -> None:
    reply = _discovery_reply("What does the Team plan cost per user?", KbLevel.ACCURATE, {})
    assert reply.startswith("Team costs $25 per user per month")
    assert "Thanks, noted" not in reply  # nothing about the customer was said


def test_discovery_does_not_quote_the_documents_back_at_a_customer_introducing_themselves() -> None:
    reply = _discovery_reply(
        "Hi, we're looking for a timesheet tool.", KbLevel.PARTIAL, ConversationMemory()
    )
    assert reply.startswith("Thanks, noted: looking for a timesheet tool.")
    assert "Slack" not in reply  # shares "timesheet" with the message, answers nothing
    # a request that states nothing about the customer is answered from the documents
    assert "Team costs $25" in _discovery_reply("Tell me about the Team plan.", KbLevel.PARTIAL, {})


def test_discovery_does_not_put_a_question_again_that_the_customer_let_pass() -> None:
    earlier = {
        "message": "We are Acme Builders, about 40 people across 3 sites, on paper.",
        "reply": "Thanks, noted: Acme Builders. To point you at the right setup: when would "
        "you like to have it running and what budget do you have in mind?",
    }
    context = ConversationContext(
        tenant_id="t",
        message="Does it work with Xero?",
        memory=ConversationMemory(facts={"sites": 3, "people": 40, "current_tool": "paper"}),
        history=[earlier],
    )
    request = ReplyRequest(
        agent=Agent.DISCOVERY,
        context=context,
        hits=[_hit("Integrations", "Tallybook exports approved timesheets to Xero nightly.")],
        kb_information_level=KbLevel.ACCURATE,
        routing_reason="discovery as proposed",
        model="local",
    )
    reply = compose_reply(request)
    assert "budget" not in reply and "when would you like" not in reply
    assert reply.endswith(
        "To point you at the right setup: who else will weigh in on the decision?"
    )
    # everything unknown asked once: a trial is offered, once, and then nothing is asked
    asked_all = {**earlier, "reply": reply}
    offer = compose_reply(
        ReplyRequest(
            **{**request.__dict__, "context": replace(context, history=[earlier, asked_all])}
        )
    )
    assert offer.endswith("Shall I set up a trial with that in mind?")
    quiet = compose_reply(
        ReplyRequest(
            **{
                **request.__dict__,
                "context": replace(
                    context, history=[earlier, asked_all, {"message": "ok", "reply": offer}]
                ),
            }
        )
    )
    assert quiet == "Tallybook exports approved timesheets to Xero nightly."
    # unless the customer asks to be asked
    invited = compose_reply(
        ReplyRequest(
            **{
                **request.__dict__,
                "context": replace(
                    context,
                    message="What else do you need to know from us?",
                    history=[earlier, asked_all, {"message": "ok", "reply": offer}],
                ),
            }
        )
    )
    assert invited.endswith(
        "when would you like to have it running and what budget do you have in mind?"
    )


def test_memory_keeps_what_discovery_asked_however_long_ago() -> None:
    facts = {"sites": 3, "people": 40, "current_tool": "paper"}
    first = _discovery_reply(
        "Hi, we are looking at timesheet tools.", KbLevel.MISSING, {"facts": facts}
    )
    assert first.endswith(
        "when would you like to have it running and what budget do you have in mind?"
    )
    memory = updated_memory(
        ConversationMemory(facts=facts),
        _turn("Hi, we are looking at timesheet tools.", "discovery"),
        Agent.DISCOVERY,
        None,
        reply=first,
    )
    assert memory.asked == ["timeline", "budget"]
    assert memory.to_stored()["asked"] == ["timeline", "budget"]
    # many turns later, the question long out of the recent history: not put again
    later = _discovery_reply("Tell me about the Team plan.", KbLevel.PARTIAL, memory)
    assert "budget" not in later and "when would you like" not in later
    assert later.endswith(
        "To point you at the right setup: who else will weigh in on the decision?"
    )
    memory = updated_memory(
        memory,
        _turn("Tell me about the Team plan.", "discovery"),
        Agent.DISCOVERY,
        None,
        reply=later,
    )
    offer = _discovery_reply("And the Business plan?", KbLevel.PARTIAL, memory)
    assert offer.endswith("Shall I set up a trial with that in mind?")
    memory = updated_memory(
        memory, _turn("And the Business plan?", "discovery"), Agent.DISCOVERY, None, reply=offer
    )
    assert memory.asked == ["timeline", "budget", "decision_makers", "trial"]
    assert questions_in(_discovery_reply("Thanks, noted.", KbLevel.MISSING, memory)) == []
    # unless the customer asks to be asked; nothing is recorded twice
    invited = _discovery_reply("What else do you need to know from us?", KbLevel.MISSING, memory)
    assert invited.endswith(
        "when would you like to have it running and what budget do you have in mind?"
    )
    again = updated_memory(
        memory,
        _turn("What else do you need to know?", "discovery"),
        Agent.DISCOVERY,
        None,
        reply=invited,
    )
    assert again.asked == memory.asked
    # a memory stored before it kept what was asked has none, and stays as it was stored
    assert "asked" not in ConversationMemory(facts=facts).to_stored()


def test_support_gives_the_fix_that_follows_the_symptom_in_its_section() -> None:
    hits = [
        _hit(
            "Troubleshooting",
            "Troubleshooting > Timesheets stuck in Pending sync: If timesheets stay in Pending "
            "sync for more than an hour, the accounting connection has usually expired. Go to "
            "Settings > Integrations, click Reconnect next to your accounting tool and sign in "
            "again. Pending timesheets are sent within five minutes.",
        ),
        _hit("Integrations", "Tallybook exports approved timesheets to Xero every night."),
    ]
    reply = _offline_reply(
        Agent.SUPPORT, "Since yesterday our timesheets are stuck in Pending sync.", hits
    )
    assert reply == (
        "Sorry about the trouble. Here is what usually fixes it:\n"
        "1. If timesheets stay in Pending sync for more than an hour, the accounting "
        "connection has usually expired.\n"
        "2. Go to Settings > Integrations, click Reconnect next to your accounting tool and "
        "sign in again.\n"
        "3. Pending timesheets are sent within five minutes.\n"
        "(Source: Troubleshooting.)"
    )


@pytest.mark.parametrize("message", ["ok thanks", "Great, that helps!", "Got it, thanks."])
def test_a_thank_you_is_not_answered_with_missing_documentation(message: str) -> None:
    reply = _offline_reply(Agent.ADAPTIVE_RESPONSE, message, [], KbLevel.MISSING)
    assert reply == "Glad to help. What else would you like to know?"
    # a message that asks or says something still gets the honest answer
    asked = _offline_reply(
        Agent.ADAPTIVE_RESPONSE, "Do you integrate with Salesforce?", [], KbLevel.MISSING
    )
    assert asked.startswith("I do not have documented information on that")


def test_discovery_answers_a_thank_you_and_asks_what_it_still_needs() -> None:
    known = {"facts": {"sites": 6, "people": 120, "current_tool": "spreadsheets"}}
    # the documents are not quoted at a thank-you, whatever the knowledge level
    reply = _discovery_reply("ok thanks", KbLevel.PARTIAL, known)
    assert reply == (
        "Glad to help. To point you at the right setup: when would you like to have it "
        "running and what budget do you have in mind?"
    )
    done = {**known, "asked": ["timeline", "budget", "decision_makers", "trial"]}
    assert _discovery_reply("ok thanks", KbLevel.MISSING, done) == (
        "Glad to help. What else would you like to know?"
    )


def test_only_the_sentences_that_answer_the_question_are_quoted() -> None:
    hits = [
        _hit(
            "Scheduling appointments",
            "Carriers book a slot from the booking portal without creating an account. "
            "When a truck is late by more than the grace period, its slot is released and "
            "the carrier is asked to rebook. "
            "Recurring appointments can be set for regular carriers, daily or weekly.",
        )
    ]
    reply = _offline_reply(
        Agent.TECHNICAL_CONSULTANT,
        "Can we set recurring appointments for our regular carriers?",
        hits,
    )
    assert reply.startswith(
        "Recurring appointments can be set for regular carriers, daily or weekly. (Source:"
    )
    assert "rebook" not in reply and "without creating an account" not in reply


def test_support_finds_the_fix_under_the_heading_that_names_the_symptom() -> None:
    hits = [
        ResearchHit(
            chunk_id=1,
            document_id="t",
            title="Troubleshooting",
            text="Troubleshooting > Drivers do not receive SMS alerts: SMS alerts are only sent "
            "on the Pro plan. Check that the driver's phone number includes the country code, "
            "such as +44.",
            score=0.73,
        ),
        ResearchHit(
            chunk_id=2,
            document_id="p",
            title="Plans and pricing",
            text="Plans and pricing: Pro costs $229 per dock door per month and adds yard "
            "check-in kiosks, SMS alerts to drivers and an open API. Every plan includes "
            "unlimited users and carriers.",
            score=0.73,
        ),
    ]
    reply = _offline_reply(Agent.SUPPORT, "Our drivers are not getting the SMS alerts", hits)
    assert reply.startswith(
        "Sorry about the trouble. Here is what usually fixes it:\n"
        "1. SMS alerts are only sent on the Pro plan.\n"
        "2. Check that the driver's phone number includes the country code, such as +44.\n"
        "(Source: Troubleshooting.)"
    )


def test_a_customer_who_asks_to_be_asked_goes_to_discovery() -> None:
    after_support = {"last_agent": "support", "last_phase": "support"}
    result = classify(ctx("What else do you need to know from us?", after_support))
    assert result.proposed_agent is Agent.DISCOVERY
