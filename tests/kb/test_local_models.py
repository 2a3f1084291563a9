"""The offline embedder and reranker: deterministic, normalised, and sensible."""

from __future__ import annotations

import math

import pytest

from shared.errors import InvalidInput
from shared.kb.jobs import run_ingest_job
from shared.providers.base import Usage
from shared.providers.local import LocalEmbedder, LocalReranker, specificity


def rerank(query: str, documents: list[str]) -> list[float]:
    return LocalReranker().rerank(
        query=query, documents=documents, model="local", usage=Usage(), deadline=0.0
    )


def test_embeddings_are_unit_length_deterministic_and_lexical() -> None:
    embedder = LocalEmbedder()
    a, b, c = embedder.embed(
        [
            "Webhooks are retried with exponential backoff.",
            "How are webhook deliveries retried?",
            "The Starter plan costs 290 USD per month.",
        ]
    )
    assert len(a) == embedder.dim == 384
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)
    assert embedder.embed(["Webhooks are retried with exponential backoff."])[0] == a

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cos(a, b) > cos(a, c) + 0.2


def test_the_embedding_of_a_fixed_text_does_not_drift() -> None:
    """Stored vectors stay comparable with new queries only while the model's output stays
    the same: this value was computed by the first version of local-hash-384."""
    vector = LocalEmbedder().embed(["Halyard sends webhooks for stock changes."])[0]
    assert round(sum(v * (i + 1) for i, v in enumerate(vector)), 4) == -59.4042


def test_reranking_ignores_question_scaffolding_and_matches_word_forms() -> None:
    passage = "Backups are encrypted and kept for 35 days. An administrator resets passwords."
    [scaffolded] = rerank("How long are backups kept?", [passage])
    [plain] = rerank("backups kept", [passage])
    assert scaffolded == plain  # "how long" shapes the question, it is not what is asked
    [possessive] = rerank("Who resets a user's password?", [passage + " Users page."])
    assert possessive > 0.7


def test_a_term_found_in_no_passage_keeps_the_score_low() -> None:
    passages = ["Halyard integrates with Shopify and NetSuite.", "Halyard runs on Android."]
    known, unknown = (
        max(rerank(f"Does it integrate with {shop}?", passages)) for shop in ("Shopify", "Magento")
    )
    assert known > 0.7 and unknown < 0.5


def test_a_missing_rare_word_weighs_more_than_a_missing_common_one() -> None:
    """A question worded apart from the documents mostly swaps common words; one about a
    thing they never name hinges on a rare word."""
    assert specificity("zapier") == 2.5  # unknown to the word lists: the most telling
    assert specificity("hipaa") > specificity("truck") > specificity("month") >= 0.1
    passages = ["Payment: you can pay by card or by bank transfer.", "Support answers email."]
    reworded = max(rerank("Can we pay by card every month?", passages))
    elsewhere = max(rerank("Can we pay by card through Klarna?", passages))
    assert reworded > elsewhere + 0.05


def test_an_ingest_job_id_must_be_a_uuid() -> None:
    with pytest.raises(InvalidInput, match="job_id"):
        run_ingest_job("not-a-uuid", embedder=LocalEmbedder())


def test_a_word_the_documents_say_otherwise_counts_as_present() -> None:
    passage = "Employees can offer a shift to colleagues in the staff app."
    [synonym] = rerank("Can workers swap shifts?", [passage])
    [stranger] = rerank("Can robots swap shifts?", [passage])
    assert synonym > stranger + 0.2  # "workers" is what the passage calls "employees"
    # a word on two lines meets both, but the two lines do not meet each other
    [car] = rerank("Are vehicles counted?", ["Each car is counted once."])
    [truck] = rerank("Are trucks counted?", ["Each car is counted once."])
    assert car > truck + 0.2


def test_a_fact_stated_for_another_plan_answers_in_part() -> None:
    passage = (
        "Plans and pricing > Plans\n"
        "The Team plan costs 4 USD per desk per month. The Business plan costs 7 USD and adds "
        "single sign-on. Enterprise is quoted per contract and adds a dedicated success manager."
    )
    [other_plan] = rerank("Is a dedicated success manager included in the Team plan?", [passage])
    [its_plan] = rerank("Is single sign-on included in the Business plan?", [passage])
    [no_plan] = rerank("Is a dedicated success manager included?", [passage])
    assert other_plan <= 0.6 < its_plan
    assert no_plan > 0.6
    # a sentence that refers back speaks of the plan the sentence before it named
    [referred] = rerank(
        "Does the Business plan include single sign-on?",
        ["Plans\nThe Business plan costs 7 USD per desk. It adds single sign-on and audit logs."],
    )
    assert referred > 0.6


def test_words_that_only_shape_a_question_are_not_looked_for() -> None:
    passage = "Lumenfield suits offices from 20 to 5,000 employees."
    [handle] = rerank("How many employees can Lumenfield handle?", [passage])
    [plain] = rerank("Lumenfield employees", [passage])
    assert handle == plain
    released = "Bookings are released when no one checks in within 15 minutes."
    [nobody] = rerank("What happens to a booking when nobody checks in?", [released])
    [bare] = rerank("booking checks in", [released])
    assert nobody == bare


def test_a_number_asked_for_is_what_the_passage_must_state() -> None:
    passage = "Employees reserve a space in the app up to 14 days ahead."
    [stated] = rerank("Can employees reserve a space 14 days ahead?", [passage])
    [other] = rerank("Can employees reserve a space 30 days ahead?", [passage])
    assert stated > 0.9
    assert other < 0.6  # the number is the question's point, not a detail
    # "how far" shapes the question as "how long" does
    [far] = rerank("How far ahead can employees reserve a space?", [passage])
    assert far == rerank("ahead employees reserve space", [passage])[0]


def test_a_contraction_is_its_words_not_a_word_of_its_own() -> None:
    """ "we're" and "doesn't" are function words however they are typed; a customer on a
    phone types a typographic apostrophe."""
    passage = "Wrenchwise syncs with QuickBooks Online."
    plain = rerank("QuickBooks Online sync", [passage])[0]
    for question in (
        "We're on QuickBooks Online, doesn't it sync?",
        "We\u2019re on QuickBooks Online, doesn\u2019t it sync?",
        "It's QuickBooks Online we're on: won't it sync?",
    ):
        assert rerank(question, [passage])[0] == plain, question
