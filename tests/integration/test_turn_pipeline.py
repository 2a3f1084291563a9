"""One turn, end to end, on real Postgres + pgvector, real Redis and real Celery workers."""

from __future__ import annotations

import itertools
import time
import uuid

import pytest
from sqlalchemy import func, select

from shared.client import enqueue_turn, get_turn, stream_turn, wait_for_turn
from shared.db.models import Conversation, Turn, TurnOutbox, TurnSpan
from shared.db.session import session_scope
from shared.db.spans import spans_of
from shared.db.turns import load_turn
from shared.errors import InvalidInput, UnknownTenant
from shared.ids import made_at_ms
from shared.redis_conn import get_redis
from shared.schemas import Agent
from shared.streaming import ReplyStream, follow, publish_end, stream_key
from shared.trace import overlap_ms, stage_bars
from shared.turn.agents import run_agent
from shared.turn.stage import StageOrigin
from tests.conftest import new_tenant

pytestmark = pytest.mark.integration


def test_a_turn_runs_as_a_chord_and_completes(workers: None, tenant: str) -> None:
    turn_id = enqueue_turn(
        tenant, "c1", "Does Halyard have a REST API and webhooks for stock changes?"
    )
    view = wait_for_turn(turn_id, timeout=90)
    assert view.status == "completed"
    assert view.proposed_agent == "technical_consultant"
    assert view.kb_information_level == "ACCURATE"
    assert view.next_agent == "technical_consultant"
    assert "REST API" in (view.agent_response or "")
    with session_scope() as session:
        spans = {s.stage: s for s in spans_of(session, turn_id)}
    assert set(spans) == {"orchestrator", "researcher", "merge", "agent"}
    assert spans["orchestrator"].queue == "orchestrator"
    assert spans["researcher"].queue == "researcher"
    assert spans["merge"].queue == "merge"
    assert spans["agent"].queue == "agents"
    assert spans["orchestrator"].pid != spans["researcher"].pid
    # the merge ran after both header stages had written their output
    assert spans["merge"].started_at >= max(
        spans["orchestrator"].finished_at, spans["researcher"].finished_at
    )
    assert view.usage["orchestrator"]["calls"] == 1 and view.usage["agent"]["tokens_out"] > 0


def test_missing_knowledge_routes_technical_questions_to_adaptive_response(
    workers: None, tenant: str
) -> None:
    view = wait_for_turn(
        enqueue_turn(tenant, "c1", "Can it connect to our on-prem SAP R/3 system over RFC?"),
        timeout=90,
    )
    assert view.proposed_agent == "technical_consultant"
    assert view.kb_information_level == "MISSING"
    assert view.next_agent == "adaptive_response"
    assert "MISSING" in (view.routing_reason or "")
    assert "rather not guess" in (view.agent_response or "")


def test_header_stages_overlap_in_time_with_simulated_latency(workers: None, tenant: str) -> None:
    turn_id = enqueue_turn(tenant, "c1", "How much does the Growth plan cost?")
    wait_for_turn(turn_id, timeout=90)
    with session_scope() as session:
        bars = stage_bars(load_turn(session, turn_id), spans_of(session, turn_id))
        simulated = {s.stage: s.simulated_ms for s in spans_of(session, turn_id)}
    # the workers simulate 40-80 ms (orchestrator) and 30-70 ms (retrieval): run in
    # parallel, they share at least most of the shorter one
    assert overlap_ms(bars) > 0.5 * min(
        simulated["orchestrator"] or 0, simulated["researcher"] or 0
    )
    assert {b.stage for b in bars} == {"orchestrator", "researcher", "merge", "agent"}


def test_stream_yields_the_reply_and_resumes_from_the_last_event(
    workers: None, tenant: str
) -> None:
    turn_id = enqueue_turn(tenant, "c1", "How much does the Growth plan cost?")
    events = list(stream_turn(turn_id, timeout=90))
    assert events[-1].kind == "end" and events[-1].status == "completed"
    text = "".join(e.text for e in events if e.kind == "token")
    assert text == get_turn(turn_id).agent_response
    resumed = list(stream_turn(turn_id, after=events[2].id, timeout=5))
    assert [e.id for e in resumed] == [e.id for e in events[3:]]


def test_every_agent_run_after_the_first_starts_with_a_restart(services: None) -> None:
    # A re-drive or a retry arrives as a new message (delivery 1): the marker must not
    # depend on the broker's redelivery count.
    turn_id = str(uuid.uuid4())
    for text in ("Hel", "Hello"):
        run = ReplyStream(turn_id)
        run.token(text)
        run.close()
    publish_end(turn_id, "completed")
    events = [(e.kind, e.text) for e in follow(turn_id, timeout_s=5)]
    assert events == [("token", "Hel"), ("restart", ""), ("token", "Hello"), ("end", "")]


def test_the_end_goes_out_after_every_token_of_its_run(services: None) -> None:
    # The agent commits its reply before its last tokens reach Redis: they and the end
    # entry are sent together, tokens first, and the end entry is never folded into them.
    turn_id = str(uuid.uuid4())
    run = ReplyStream(turn_id)
    for text in ("Hel", "lo", " there"):
        run.token(text)
    run.end("completed")
    events = [(e.kind, e.text, e.status) for e in follow(turn_id, timeout_s=5)]
    assert events[-1] == ("end", "", "completed")
    assert {kind for kind, _, _ in events[:-1]} == {"token"}
    assert "".join(text for _, text, _ in events[:-1]) == "Hello there"


def test_an_agent_run_after_the_end_announces_it_again(workers: None, tenant: str) -> None:
    turn_id = enqueue_turn(tenant, "c-announce", "How much does the Growth plan cost?")
    view = wait_for_turn(turn_id, timeout=90)
    assert view.status == "completed" and view.next_agent
    get_redis().delete(stream_key(turn_id))  # as if the end was committed but never streamed
    origin = StageOrigin.here(queue="agents")
    completion = run_agent(turn_id, agent=Agent(view.next_agent), retrieve=False, origin=origin)
    assert (completion.ended, completion.next_turn) == (False, None)
    [end] = list(stream_turn(turn_id, timeout=5))
    assert (end.kind, end.status) == ("end", "completed")
    assert get_turn(turn_id).agent_response == view.agent_response  # one reply, unchanged


def test_turns_of_one_conversation_run_in_order(workers: None, tenant: str) -> None:
    messages = [
        "We run three warehouses.",
        "How much is the Growth plan?",
        "Does it have webhooks?",
        "Write a summary email for my CFO",
    ]
    ids = [enqueue_turn(tenant, "ordered", m) for m in messages]
    views = [wait_for_turn(i, timeout=60) for i in ids]
    assert [v.seq for v in views] == [1, 2, 3, 4]
    # time-ordered ids (version 7): a later turn's id sorts after an earlier one's
    assert all(uuid.UUID(i).version == 7 for i in ids)
    made = [made_at_ms(uuid.UUID(i)) for i in ids]
    assert made == sorted(made)
    accepted_ms = views[0].accepted_at * 1000
    assert accepted_ms - 1000 <= made[0] <= accepted_ms + 1  # made just before its acceptance
    assert all(v.status == "completed" for v in views)
    with session_scope() as session:
        starts = {}
        for turn_id in ids:
            spans = spans_of(session, turn_id)
            starts[turn_id] = min(s.started_at for s in spans)
    for earlier, later in itertools.pairwise(views):
        # the next turn's first stage started only after the earlier turn completed
        assert starts[later.id] >= (earlier.completed_at or 0)
    with session_scope() as session:
        conv = session.scalar(
            select(Conversation).where(
                Conversation.tenant_id == tenant, Conversation.external_id == "ordered"
            )
        )
        assert conv is not None
        assert conv.id.version == 7
        assert conv.active_turn_id is None
        assert conv.contextual_memory["turns"] == 4
        assert conv.qualification_status == "qualified"


def test_idempotency_key_returns_the_same_turn(workers: None, tenant: str) -> None:
    first = enqueue_turn(
        tenant, "c1", "Hello there, we are evaluating tools", idempotency_key="req-1"
    )
    second = enqueue_turn(
        tenant, "c1", "Hello there, we are evaluating tools", idempotency_key="req-1"
    )
    assert first == second
    wait_for_turn(first, timeout=90)
    with session_scope() as session:
        assert (
            session.scalar(select(func.count()).select_from(Turn).where(Turn.tenant_id == tenant))
            == 1
        )


def test_sequential_topology_has_the_agent_do_its_own_retrieval(workers: None) -> None:
    tenant = new_tenant({"topology": "sequential"})
    turn_id = enqueue_turn(tenant, "c1", "Is customer data encrypted at rest?")
    view = wait_for_turn(turn_id, timeout=90)
    assert view.status == "completed" and view.topology == "sequential"
    with session_scope() as session:
        spans = {s.stage: s for s in spans_of(session, turn_id)}
    assert spans["researcher"].queue == "agents"  # retrieval ran inside the agent task
    assert spans["researcher"].started_at >= spans["orchestrator"].finished_at
    assert view.kb_information_level is not None


def _counts(tenant: str) -> tuple[int, int, int]:
    with session_scope() as session:
        return (
            session.scalar(select(func.count()).select_from(Turn).where(Turn.tenant_id == tenant))
            or 0,
            session.scalar(select(func.count()).select_from(TurnOutbox)) or 0,
            session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(Conversation.tenant_id == tenant)
            )
            or 0,
        )


@pytest.mark.parametrize(
    ("args", "field", "limit_text"),
    [
        (("c1", ""), "message", "must not be empty"),
        (("c1", "x" * 8001), "message", "the limit is 8000"),
        (("bad id!", "hello"), "conversation", "may hold only"),
        (("c1", 123), "message", "must be a string"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    services: None, tenant: str, args: tuple[object, object], field: str, limit_text: str
) -> None:
    before = _counts(tenant)
    with pytest.raises(InvalidInput) as caught:
        enqueue_turn(tenant, *args)  # type: ignore[arg-type]
    assert caught.value.field == field and limit_text in str(caught.value)
    assert _counts(tenant) == before


def test_unknown_tenant_is_refused(services: None) -> None:
    with pytest.raises(UnknownTenant, match="tenant: unknown tenant 'nobody'"):
        enqueue_turn("nobody", "c1", "hello")


def test_get_turn_rejects_a_malformed_id(services: None) -> None:
    with pytest.raises(InvalidInput, match="turn_id"):
        get_turn("1234")


def test_spans_record_queue_wait_and_fields(workers: None, tenant: str) -> None:
    turn_id = enqueue_turn(tenant, "c1", "How much does the Growth plan cost?")
    wait_for_turn(turn_id, timeout=90)
    with session_scope() as session:
        spans = {
            s.stage: s
            for s in session.scalars(select(TurnSpan).where(TurnSpan.turn_id == uuid.UUID(turn_id)))
        }
    for span in spans.values():
        assert (
            span.enqueued_at is not None and span.enqueued_at <= span.started_at <= span.finished_at
        )
        assert span.attempt == 1 and span.worker and span.pid
    assert "kb_information_level" in spans["researcher"].fields_written
    assert "next_agent" in spans["merge"].fields_written
    assert time.time() - spans["agent"].finished_at < 60
