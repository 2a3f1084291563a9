"""Whole turns through real Celery workers whose providers are the openai and cohere SDKs,
pointed at the fake APIs on loopback (OPENAI_BASE_URL / COHERE_BASE_URL).

The workers run on a Redis database of their own, so the session's simulated workers never
take these turns. Each failure class is scripted on the fake servers, and each turn must end
completed (with the stage's fallback recorded) within its budget.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from rich.console import Console
from sqlalchemy import text
from typer.testing import CliRunner

from shared.client import TurnView, enqueue_turn, stream_turn, wait_for_turn
from shared.customer_facts import facts_in
from shared.db.session import session_scope
from shared.db.spans import spans_of
from shared.db.tenants import ensure_tenant
from shared.db.usage import tenant_usage
from shared.kb.ingest import ingest_paths
from shared.providers.registry import build_providers
from shared.redis_conn import get_redis
from shared.tools.cli.main import app
from shared.tools.demo.conversation import DEMO_KB, SCRIPT, coverage_gaps, play_demo
from shared.tools.stack.procfile import TURN_PROCESSES, running_workers
from shared.tools.stack.services import reset_process_state
from shared.turn.agents import FALLBACK_REPLY
from tests.conftest import ARTIFACTS
from tests.providers.conftest import COHERE_KEY, OPENAI_KEY, fake_api_env, settings_for
from tests.providers.fake_apis import (
    FakeAPI,
    Reply,
    is_facts_request,
    malformed,
    rate_limited,
    server_error,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUDGET_S = 6.0
# A generous allowance for a loaded 2-core machine on top of the budget: the point is that
# a turn ends (completed or failed, with a reason) instead of hanging, not how fast.
SLACK_S = 4.0
LOG_DIR = ARTIFACTS / "provider-worker-logs"
REDIS_DB = 11
TECHNICAL = "Does Halyard have a REST API and webhooks for stock changes?"
MODELS = {"orchestrator": "gpt-4o", "agent": "gpt-4o-mini", "rerank": "rerank-english-v3.0"}


def _own_redis_db(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{REDIS_DB}", parts.query, ""))


@dataclass(frozen=True)
class ModelApis:
    openai: FakeAPI
    cohere: FakeAPI
    tenant: str


@pytest.fixture(scope="module")
def model_api_workers(
    services: None, openai_server: FakeAPI, cohere_server: FakeAPI
) -> Iterator[ModelApis]:
    """Turn workers on the fake model APIs, and a tenant whose KB they embedded."""
    saved = os.environ["REDIS_URL"]
    os.environ["REDIS_URL"] = _own_redis_db(saved)
    reset_process_state()
    get_redis().flushdb()
    for log in LOG_DIR.glob("*.log"):
        log.unlink()
    env = {
        **fake_api_env(openai_server, cohere_server),
        "REDIS_URL": os.environ["REDIS_URL"],
        "CHORDLINE_TURN_BUDGET_S": str(BUDGET_S),
        "CHORDLINE_LOG_FORMAT": "json",
    }
    try:
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        with session_scope() as session:
            ensure_tenant(session, tenant_id=tenant, settings={"models": MODELS})
        embedder = build_providers(settings_for(openai_server, cohere_server)).embedder
        ingest_paths([DEMO_KB], tenant_id=tenant, embedder=embedder)
        with running_workers(TURN_PROCESSES, env_overrides=env, log_dir=LOG_DIR):
            yield ModelApis(openai_server, cohere_server, tenant)
    finally:
        os.environ["REDIS_URL"] = saved
        reset_process_state()


@pytest.fixture
def apis(model_api_workers: ModelApis) -> ModelApis:
    model_api_workers.openai.reset()
    model_api_workers.cohere.reset()
    return model_api_workers


def run_turn(apis: ModelApis, message: str = TECHNICAL) -> TurnView:
    turn_id = enqueue_turn(apis.tenant, f"c-{uuid.uuid4().hex[:8]}", message)
    view = wait_for_turn(turn_id, timeout=BUDGET_S + 30)
    assert view.status == "completed", view.failure_reason
    assert view.latency_ms is not None and view.latency_ms < (BUDGET_S + SLACK_S) * 1000
    return view


def chat_calls(apis: ModelApis) -> list[bool]:
    """One entry per chat completion the workers made to route or to reply: streamed or not
    (the agent stage's fact extractions are ``facts_calls``)."""
    return [
        bool(c.body.get("stream"))
        for c in apis.openai.calls("/chat/completions")
        if not is_facts_request(c.body)
    ]


def facts_calls(apis: ModelApis) -> list[dict[str, Any]]:
    """The bodies of the agent stage's fact extractions."""
    return [c.body for c in apis.openai.calls("/chat/completions") if is_facts_request(c.body)]


def test_a_turn_runs_on_the_model_apis_end_to_end(apis: ModelApis) -> None:
    # tokens paced as a model sends them (the stream writer joins the tokens that arrive
    # within one of its ticks, 50 ms by default, into one entry)
    apis.openai.script("stream", Reply(token_delay_s=0.08))
    turn_id = enqueue_turn(apis.tenant, "c-normal", TECHNICAL)
    tokens = [e.text for e in stream_turn(turn_id, timeout=BUDGET_S + 30) if e.kind == "token"]
    view = wait_for_turn(turn_id, timeout=10)
    assert view.status == "completed" and not view.agent_fallback
    assert (view.proposed_agent, view.kb_information_level, view.next_agent) == (
        "technical_consultant",
        "ACCURATE",
        "technical_consultant",
    )
    # the agent's tokens went through the turn's stream as the API sent them, not at the end
    [stream] = [c for c in apis.openai.calls("/chat/completions") if c.body.get("stream")]
    assert view.agent_response == FakeAPI.reply_text(stream.body) == "".join(tokens)
    assert len(tokens) > 5
    # the tenant's model per stage reached the APIs (the agent's model reads the facts too)
    assert sorted(c.body["model"] for c in apis.openai.calls("/chat/completions")) == [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-mini",
    ]
    assert len(facts_calls(apis)) == 1
    assert [c.body["model"] for c in apis.openai.calls("/embeddings")] == ["text-embedding-3-small"]
    assert [c.body["model"] for c in apis.cohere.calls("/v2/rerank")] == ["rerank-english-v3.0"]
    # usage, as the APIs reported it, per stage on the turn and on its spans
    usage = view.usage
    assert usage["orchestrator"]["calls"] == 1 and usage["orchestrator"]["tokens_out"] == 17
    assert usage["researcher"]["calls"] == 2 and usage["researcher"]["search_units"] == 1
    # the agent stage: its streamed reply and its fact extraction (17 tokens on the fake)
    assert usage["agent"]["calls"] == 2 and usage["agent"]["tokens_out"] == len(tokens) + 17
    with session_scope() as session:
        spans = {s.stage: s for s in spans_of(session, turn_id)}
    assert spans["agent"].tokens_out == len(tokens) + 17
    assert spans["orchestrator"].tokens_in == usage["orchestrator"]["tokens_in"] > 0


def test_the_demo_runs_on_the_model_apis(apis: ModelApis, monkeypatch: pytest.MonkeyPatch) -> None:
    """With keys set, the scripted demo (this process included) runs on OpenAI and Cohere."""
    for name, value in fake_api_env(apis.openai, apis.cohere).items():
        monkeypatch.setenv(name, value)
    reset_process_state()
    try:
        turns = play_demo(console=Console(file=io.StringIO()), timeout_s=BUDGET_S + 30)
    finally:
        monkeypatch.undo()
        reset_process_state()
    assert coverage_gaps(turns) == []
    assert all(turn.reply for turn in turns)
    # every turn was classified and answered by the chat API, and its question was embedded
    # by the embeddings API; the researcher reranked through Cohere
    assert sorted(chat_calls(apis)) == [False] * len(SCRIPT) + [True] * len(SCRIPT)
    assert len(facts_calls(apis)) == len(SCRIPT)  # each turn's facts read by the chat API
    assert len(apis.openai.calls("/embeddings")) >= len(SCRIPT)
    assert apis.cohere.calls("/v2/rerank")
    with session_scope() as session:
        fallbacks = session.execute(
            text(
                "SELECT count(*) FROM turns WHERE id = ANY(CAST(:ids AS uuid[])) AND agent_fallback"
            ),
            {"ids": [turn.turn_id for turn in turns]},
        ).scalar_one()
    assert fallbacks == 0


def test_a_rate_limited_orchestrator_waits_for_retry_after_and_completes(apis: ModelApis) -> None:
    apis.openai.script("chat", rate_limited(0.5))
    view = run_turn(apis)
    assert view.proposed_agent == "technical_consultant" and view.intent == "technical_question"
    assert chat_calls(apis).count(False) == 2
    assert view.usage["orchestrator"]["retries"] == 1


def test_a_refusal_takes_the_default_route_and_records_why(apis: ModelApis) -> None:
    apis.openai.script("chat", Reply(refusal="I can't help with routing this."))
    view = run_turn(apis)
    assert (view.intent, view.proposed_agent, view.next_agent) == (
        "fallback",
        "adaptive_response",
        "adaptive_response",
    )
    note = orchestration_note(view)
    assert "refused to route the turn: I can't help with routing this." in note
    assert chat_calls(apis).count(False) == 1  # not retried


def test_retry_after_longer_than_the_budget_fails_over_at_once(apis: ModelApis) -> None:
    apis.openai.script("chat", rate_limited(60))
    began = time.monotonic()
    view = run_turn(apis)
    assert time.monotonic() - began < BUDGET_S + SLACK_S
    assert view.intent == "fallback"
    assert "would not fit" in orchestration_note(view)
    assert not view.agent_fallback  # the agent still had its time


def test_a_slow_orchestrator_times_out_and_the_turn_ends_in_budget(apis: ModelApis) -> None:
    apis.openai.script("chat", *[Reply(delay_s=30)] * 3)
    view = run_turn(apis)
    assert view.intent == "fallback"
    assert "timed out" in orchestration_note(view)


def test_rerank_server_errors_mark_a_retrieval_failure(apis: ModelApis) -> None:
    apis.cohere.script("rerank", server_error(), server_error(), server_error())
    view = run_turn(apis)
    assert view.kb_information_level == "MISSING"
    assert view.next_agent == "adaptive_response"  # a technical question the KB cannot back
    note = research_note(view)
    assert note.startswith("retrieval failed: cohere: server error (HTTP 500)")
    assert "gave up after 3 attempts" in note
    assert len(apis.cohere.calls("/v2/rerank")) == 3


def test_malformed_embeddings_mark_a_retrieval_failure(apis: ModelApis) -> None:
    apis.openai.script("embeddings", malformed(), malformed(), malformed())
    view = run_turn(apis)
    assert view.kb_information_level == "MISSING"
    assert "retrieval failed: openai: malformed response" in research_note(view)


def test_a_stalled_reply_ends_with_the_fallback_reply_marked_as_such(apis: ModelApis) -> None:
    apis.openai.script("stream", Reply(stall_after_chunks=3, stall_s=60))
    view = run_turn(apis)
    assert view.agent_fallback is True
    assert view.agent_response == FALLBACK_REPLY
    assert_logged_fallback(view.id, "agent", "timed out")
    assert "timed out" in (view.agent_note or "")


def test_an_unknown_agent_model_ends_with_the_fallback_reply_and_names_the_setting(
    apis: ModelApis,
) -> None:
    with session_scope() as session:
        ensure_tenant(
            session, tenant_id=apis.tenant, settings={"models": {**MODELS, "agent": "gpt-nope"}}
        )
    try:
        view = run_turn(apis)
    finally:
        with session_scope() as session:
            ensure_tenant(session, tenant_id=apis.tenant, settings={"models": MODELS})
    assert view.agent_fallback is True
    assert chat_calls(apis).count(True) == 1  # not retried
    assert_logged_fallback(view.id, "agent", "unknown model 'gpt-nope'")
    assert "unknown model 'gpt-nope'" in (view.agent_note or "")


def test_rejected_keys_end_the_turn_with_reasons_and_no_key_is_stored_or_logged(
    apis: ModelApis,
) -> None:
    # Like the real APIs, the fake ones echo the rejected key in the error body.
    def rejected(key: str) -> Reply:
        return Reply(status=401, body={"error": {"message": f"Incorrect API key provided: {key}"}})

    apis.openai.script("chat", rejected(OPENAI_KEY))
    apis.openai.script("stream", rejected(OPENAI_KEY))
    apis.cohere.script("rerank", rejected(COHERE_KEY))
    view = run_turn(apis, "We run three warehouses. Is there an API for stock levels?")
    assert (
        "openai: the API key was rejected (HTTP 401); set a valid OPENAI_API_KEY"
        in orchestration_note(view)
    )
    assert research_note(view) == (
        "retrieval failed: cohere: the API key was rejected (HTTP 401); set a valid COHERE_API_KEY"
    )
    assert view.agent_fallback is True and view.agent_response == FALLBACK_REPLY
    # permanent errors fail fast: one call each, no retries (and so no backoff slept)
    assert chat_calls(apis) == [False, True]
    assert len(apis.cohere.calls("/v2/rerank")) == 1
    assert_logged_fallback(view.id, "agent", "set a valid OPENAI_API_KEY")
    assert "set a valid OPENAI_API_KEY" in (view.agent_note or "")
    assert_no_key_anywhere(apis.tenant)


# Facts the offline patterns cannot read from this message: only the model call finds them.
PLAIN = "Orbis Freight here, with depots in four cities, moving off paper lists. What does it cost?"
EXTRACTED = {
    "company": "Orbis Freight",
    "sites": 4,
    "people": None,
    "current_tool": "paper lists",
    "budget": None,
    "timeline": None,
    "decision_makers": ["CFO"],
    "needs": [],
}
WITH_FACTS = "We run three warehouses with 40 people and use Fishbowl today. What does it cost?"


def test_the_facts_of_a_turn_are_read_with_structured_output_into_memory(
    apis: ModelApis,
) -> None:
    assert facts_in(PLAIN) == {}
    apis.openai.script("facts", Reply(content=json.dumps(EXTRACTED)))
    view = run_turn(apis, PLAIN)
    assert not view.agent_fallback
    assert conversation_memory(view)["facts"] == {
        "company": "Orbis Freight",
        "sites": 4,
        "current_tool": "paper lists",
        "decision_makers": ["CFO"],
    }
    [body] = facts_calls(apis)
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["model"] == MODELS["agent"]
    assert view.usage["agent"]["calls"] == 2


def test_a_refused_extraction_falls_back_to_patterns_and_the_turn_completes(
    apis: ModelApis,
) -> None:
    apis.openai.script("facts", Reply(refusal="I can't help with that."))
    view = run_turn(apis, WITH_FACTS)
    assert not view.agent_fallback and view.agent_response
    assert conversation_memory(view)["facts"] == facts_in(WITH_FACTS)
    assert facts_in(WITH_FACTS)["current_tool"] == "Fishbowl"
    assert_logged(view.id, "facts_fallback", "refused to extract the customer's facts")
    assert len(facts_calls(apis)) == 1  # a refusal is not retried


def test_a_tenants_usage_sums_its_turns(apis: ModelApis) -> None:
    # Two turns of its own, so there is something to sum whichever tests ran before it.
    mine = {run_turn(apis).id for _ in range(2)}
    with session_scope() as session:
        summed = tenant_usage(session, apis.tenant)
        usage_by_turn: dict[str, dict[str, dict[str, int]]] = dict(
            session.execute(
                text("SELECT id::text, usage FROM turns WHERE tenant_id = :t"), {"t": apis.tenant}
            ).all()
        )
    assert mine <= set(usage_by_turn)
    rows = list(usage_by_turn.values())
    assert summed.turns == len(rows)
    for stage in ("orchestrator", "researcher", "agent"):
        for counter in ("calls", "tokens_in", "tokens_out"):
            expected = sum(int(r.get(stage, {}).get(counter, 0)) for r in rows)
            assert getattr(summed.stages[stage], counter) == expected
    assert summed.total.calls == sum(s.calls for s in summed.stages.values()) > 0
    result = CliRunner().invoke(app, ["usage", "--tenant", apis.tenant, "--json"])
    assert result.exit_code == 0, result.output
    shown = {row["stage"]: row for row in json.loads(result.output)["stages"]}
    assert shown["total"]["tokens_out"] == summed.total.tokens_out
    assert shown["researcher"]["search_units"] == summed.stages["researcher"].search_units > 0


# --------------------------------------------------------------------------- helpers


def _turn_column(turn_id: str, column: str) -> str:
    with session_scope() as session:
        value = session.execute(
            text(f"SELECT {column} FROM turns WHERE id = :id"), {"id": turn_id}
        ).scalar_one()
    return str(value or "")


def conversation_memory(view: TurnView) -> dict[str, Any]:
    with session_scope() as session:
        memory: dict[str, Any] = session.execute(
            text(
                "SELECT c.contextual_memory FROM conversations c "
                "JOIN turns t ON t.conversation_id = c.id WHERE t.id = :id"
            ),
            {"id": view.id},
        ).scalar_one()
    return memory


def orchestration_note(view: TurnView) -> str:
    return _turn_column(view.id, "orchestration_note")


def research_note(view: TurnView) -> str:
    return _turn_column(view.id, "research_note")


def _worker_logs() -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(Path(LOG_DIR).glob("*.log")))


def assert_logged(turn_id: str, action: str, reason: str) -> None:
    """The worker logged ``action`` for the turn, with ``reason``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in _worker_logs().splitlines():
            if f'"{action}"' in line and turn_id in line:
                assert reason in line, line
                return
        time.sleep(0.2)
    raise AssertionError(f"no {action} log line for turn {turn_id}")


def assert_logged_fallback(turn_id: str, stage: str, reason: str) -> None:
    """The worker logged why the stage fell back, with the turn's id."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in _worker_logs().splitlines():
            if '"stage_fallback"' in line and turn_id in line and f'"stage": "{stage}"' in line:
                assert reason in line, line
                return
        time.sleep(0.2)
    raise AssertionError(f"no stage_fallback log line for {stage} of turn {turn_id}")


def assert_no_key_anywhere(tenant: str) -> None:
    """Neither key is in the worker logs, the tenant's rows, or anything in Redis."""
    keys = (OPENAI_KEY, COHERE_KEY)
    logs = _worker_logs()
    assert logs and not any(key in logs for key in keys)
    with session_scope() as session:
        rows = (
            session.execute(
                text(
                    """
                SELECT row_to_json(t)::text FROM turns t WHERE tenant_id = :t
                UNION ALL SELECT row_to_json(s)::text FROM turn_spans s
                    JOIN turns t ON t.id = s.turn_id WHERE t.tenant_id = :t
                UNION ALL SELECT row_to_json(c)::text FROM conversations c WHERE tenant_id = :t
                UNION ALL SELECT row_to_json(n)::text FROM tenants n WHERE id = :t
                """
                ),
                {"t": tenant},
            )
            .scalars()
            .all()
        )
    assert rows and not any(key in row for row in rows for key in keys)
    redis = get_redis()
    dumped = []
    for name in redis.scan_iter(count=500):
        kind = redis.type(name)
        if kind == "string":
            dumped.append(str(redis.get(name)))
        elif kind == "hash":
            dumped.append(str(redis.hgetall(name)))
        elif kind == "list":
            dumped.append(str(redis.lrange(name, 0, -1)))
        elif kind == "stream":
            dumped.append(str(redis.xrange(name)))
        elif kind in ("set", "zset"):
            dumped.append(
                str(redis.zrange(name, 0, -1) if kind == "zset" else redis.smembers(name))
            )
    assert dumped and not any(key in value for value in dumped for key in keys)
