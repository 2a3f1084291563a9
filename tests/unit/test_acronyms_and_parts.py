"""Acronym definitions, question parts and Snowball stems: the text analysis behind the
offline knowledge levels."""

from __future__ import annotations

import time

from shared.kb.acronyms import Definition, aliases_for, tenant_definitions
from shared.kb.levels import level_of_parts, question_parts
from shared.providers.base import Usage
from shared.providers.local import LocalReranker
from shared.schemas import KbLevel, LevelThresholds
from shared.text import stem


def test_definitions_are_found_in_either_order_only_when_the_initials_spell_them() -> None:
    found = tenant_definitions(
        [
            "Tallyway supports single sign-on (SSO) on the Business plan.",
            "RBAC (role-based access control) limits who sees invoices.",
            "Our plans (2024) and the Starter tier (SX) are described here.",  # no spelling
        ]
    )
    assert found == [
        Definition("SSO", "single sign on"),
        Definition("RBAC", "role based access control"),
    ]


def test_a_chunk_gets_the_spelling_it_lacks_and_nothing_it_has() -> None:
    definitions = [Definition("SSO", "single sign on")]
    assert aliases_for("Single sign-on works with Google Workspace.", definitions) == "SSO"
    assert aliases_for("Turn SSO on under Settings.", definitions) == "single sign on"
    assert aliases_for("Single sign-on (SSO) is included.", definitions) == ""
    assert aliases_for("Assorted items.", definitions) == ""  # "sso" inside a word is not it


def test_a_question_asking_two_things_has_two_parts() -> None:
    assert question_parts(
        "Does it integrate with QuickBooks and how much does the Business plan cost?"
    ) == ["Does it integrate with QuickBooks", "how much does the Business plan cost?"]
    assert question_parts("What is the price? And is there a trial?") == [
        "What is the price?",
        "And is there a trial?",
    ]
    assert question_parts("Do you support SAML and SCIM?") == ["Do you support SAML and SCIM?"]
    assert question_parts("Hi. Does it integrate with Xero?") == [
        "Hi. Does it integrate with Xero?"
    ]


def test_a_question_is_accurate_only_when_every_part_is() -> None:
    t = LevelThresholds(accurate=0.7, partial=0.4)
    assert level_of_parts([0.9, 0.8], t) is KbLevel.ACCURATE
    assert level_of_parts([0.9, 0.1], t) is KbLevel.PARTIAL
    assert level_of_parts([0.2, 0.1], t) is KbLevel.MISSING
    assert level_of_parts([], t) is KbLevel.MISSING


def test_snowball_stems_meet_where_the_light_stripper_did_not() -> None:
    assert stem("encrypted") == stem("encryption") == stem("encrypts")
    assert stem("integrate") == stem("integrations") == stem("integrated")


def test_a_past_form_of_an_irregular_verb_meets_its_base_form() -> None:
    assert stem("paid") == stem("pay") == stem("paying")
    assert stem("kept") == stem("keep") == stem("keeps")
    assert stem("sent") == stem("send") and stem("built") == stem("build")
    assert stem("led") != stem("lead")  # more often a light (LED) than a verb in product docs


def test_documents_in_the_passive_answer_questions_in_the_present() -> None:
    reranker = LocalReranker()
    passages = [
        "Security: Backups run every six hours and are kept for 30 days.",
        "Pricing: Invoices are paid by bank transfer or credit card.",
    ]
    accurate = LevelThresholds().accurate

    def scores(question: str) -> list[float]:
        return reranker.rerank(
            query=question,
            documents=passages,
            model="local",
            usage=Usage(),
            deadline=time.time() + 5,
        )

    assert scores("How long do you keep backups?")[0] >= accurate
    assert scores("Can we pay by credit card?")[1] >= accurate
    assert max(scores("Can I pay with PayPal?")) < LevelThresholds().partial
