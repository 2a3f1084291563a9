"""The customer's facts read by the openai SDK with Structured Outputs, against the fake
OpenAI server on loopback, and the fall back to patterns when that call fails."""

from __future__ import annotations

import json
import logging
import time
import typing
import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest

from shared.customer_facts import facts_in
from shared.db.turns import TurnRecord
from shared.providers.base import ConversationContext, ReplyRequest, Usage
from shared.providers.local import (
    LocalChatModel,
    LocalEmbedder,
    LocalReranker,
    PatternFacts,
)
from shared.providers.openai import OpenAIChatModel
from shared.providers.prompts import FACTS_SCHEMA, agent_messages
from shared.providers.registry import Providers, build_providers
from shared.schemas import Agent, ConversationMemory, CustomerFacts, KbLevel, StageModels
from shared.turn import agents
from shared.turn.agents import message_facts, start_facts, updated_memory
from shared.turn.store import StageInputs
from tests.providers.conftest import settings_for
from tests.providers.fake_apis import FakeAPI, Reply, malformed, server_error

MESSAGE = "We run three warehouses with 40 people and use Fishbowl today. Our CFO decides."
# Facts the patterns cannot read from this message: only the model call finds them.
PLAIN = "Orbis Freight here, with depots in four cities, moving off paper lists before spring."
EXTRACTED = {
    "company": "Orbis Freight",
    "sites": 4,
    "people": None,
    "current_tool": "paper picking lists",
    "budget": None,
    "timeline": "before spring",
    "decision_makers": [],
    "needs": ["barcode picking"],
}


def facts_model(openai_api: FakeAPI, cohere_api: FakeAPI) -> OpenAIChatModel:
    providers = build_providers(settings_for(openai_api, cohere_api))
    assert isinstance(providers.facts, OpenAIChatModel) and providers.facts is providers.chat
    return providers.facts


def _turn(message: str) -> TurnRecord:
    return cast(
        TurnRecord,
        SimpleNamespace(
            id=uuid.uuid4(), tenant_id="acme", message=message, phase="discovery", intent="x"
        ),
    )


def read_facts(
    openai_api: FakeAPI,
    cohere_api: FakeAPI,
    message: str,
    memory: ConversationMemory | None = None,
    usage: Usage | None = None,
) -> CustomerFacts:
    return message_facts(
        facts_model(openai_api, cohere_api),
        turn=_turn(message),
        memory=memory or ConversationMemory(),
        model="gpt-4o-mini",
        usage=usage or Usage(),
        deadline=time.time() + 10,
    )


def test_the_request_carries_the_strict_schema_of_customer_facts(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    usage = Usage()
    facts = read_facts(openai_api, cohere_api, MESSAGE, usage=usage)
    assert facts == facts_in(MESSAGE)  # the fake answers with what the patterns read
    assert facts["sites"] == 3 and facts["current_tool"] == "Fishbowl"
    [call] = openai_api.calls("/chat/completions")
    assert "stream" not in call.body
    assert call.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "customer_facts", "strict": True, "schema": FACTS_SCHEMA},
    }
    schema = call.body["response_format"]["json_schema"]["schema"]
    fields = list(typing.get_type_hints(CustomerFacts))
    # strict mode: every field required, each nullable, nothing else allowed
    assert list(schema["properties"]) == fields and schema["required"] == fields
    assert schema["additionalProperties"] is False
    assert all("null" in schema["properties"][f]["type"] for f in fields)
    assert schema["properties"]["sites"]["type"] == ["integer", "null"]
    assert schema["properties"]["needs"]["items"] == {"type": "string"}
    assert call.body["messages"][-1] == {"role": "user", "content": MESSAGE}
    prompt_tokens = sum(len(str(m["content"]).split()) for m in call.body["messages"])
    assert (usage.calls, usage.tokens_in, usage.tokens_out) == (1, prompt_tokens, 17)


def test_the_facts_the_sdk_extracted_land_in_the_typed_memory(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    assert facts_in(PLAIN) == {}
    openai_api.script("facts", Reply(content=json.dumps(EXTRACTED)))
    before = ConversationMemory(facts={"people": 40, "needs": ["an API"], "sites": 2})
    stated = read_facts(openai_api, cohere_api, PLAIN, memory=before)
    assert stated == {
        "company": "Orbis Freight",
        "sites": 4,
        "current_tool": "paper picking lists",
        "timeline": "before spring",
        "needs": ["barcode picking"],
    }
    after = updated_memory(before, _turn(PLAIN), Agent.DISCOVERY, None, stated)
    # remembered_facts' rules: a fact stated again replaces the one known, needs accumulate
    assert after.facts == {
        "people": 40,
        "sites": 4,
        "needs": ["an API", "barcode picking"],
        "company": "Orbis Freight",
        "current_tool": "paper picking lists",
        "timeline": "before spring",
    }
    assert ConversationMemory.from_stored(after.to_stored()) == after
    # the model was told what is known already
    [call] = openai_api.calls("/chat/completions")
    assert any('"people": 40' in m["content"] for m in call.body["messages"])


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ([Reply(refusal="I can't help with that.")], "refused to extract the customer's facts"),
        ([Reply(content="company: Orbis")], "invalid answer (not a JSON object"),
        ([Reply(content='["Orbis"]')], "invalid answer (not a JSON object"),
        ([Reply(content='{"sites": "three"}')], "invalid answer (sites:"),
        ([Reply(content='{"company": "Orb', finish_reason="length")], "ran out of tokens"),
        ([server_error()] * 3, "server error (HTTP 500)"),
        ([malformed()] * 3, "malformed response"),
    ],
)
def test_a_failed_extraction_falls_back_to_patterns_and_is_logged(
    openai_api: FakeAPI,
    cohere_api: FakeAPI,
    caplog: pytest.LogCaptureFixture,
    replies: list[Reply],
    reason: str,
) -> None:
    openai_api.script("facts", *replies)
    with caplog.at_level(logging.WARNING, logger="shared.turn.agents"):
        facts = read_facts(openai_api, cohere_api, MESSAGE)
    assert facts == facts_in(MESSAGE)
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "facts_fallback"]
    extra: Any = record
    assert extra.provider == "openai" and extra.tenant_id == "acme"
    assert reason in extra.reason


def test_a_turn_past_its_budget_calls_no_model_for_facts(
    openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    facts = message_facts(
        facts_model(openai_api, cohere_api),
        turn=_turn(MESSAGE),
        memory=ConversationMemory(),
        model="gpt-4o-mini",
        usage=Usage(),
        deadline=time.time() - 1,
    )
    assert facts == facts_in(MESSAGE)
    assert openai_api.calls("/chat/completions") == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"CHORDLINE_PROVIDERS": "offline"},
        {"CHORDLINE_PROVIDERS": "simulated"},
        {"CHORDLINE_CHAT_PROVIDER": "local"},
    ],
)
def test_without_openai_chat_the_facts_are_read_with_patterns(
    openai_api: FakeAPI, cohere_api: FakeAPI, overrides: dict[str, str]
) -> None:
    extractor = build_providers(settings_for(openai_api, cohere_api, **overrides)).facts
    assert isinstance(extractor, PatternFacts) and not extractor.calls_a_model
    usage = Usage()
    facts = extractor.extract_facts(
        message=MESSAGE, memory=ConversationMemory(), model="-", usage=usage, deadline=0
    )
    assert facts == facts_in(MESSAGE) and usage.calls == 0


def test_the_agents_brief_holds_the_facts_already_known() -> None:
    memory = ConversationMemory(facts={"sites": 3, "current_tool": "Fishbowl"})
    request = ReplyRequest(
        agent=Agent.DISCOVERY,
        context=ConversationContext(tenant_id="acme", message="What does it cost?", memory=memory),
        hits=[],
        kb_information_level=KbLevel.PARTIAL,
        routing_reason="pricing",
        model="gpt-4o-mini",
    )
    briefs = [m["content"] for m in agent_messages(request) if m["role"] == "system"]
    assert any("never ask for it again" in b and '"current_tool": "Fishbowl"' in b for b in briefs)
    empty = ReplyRequest(**{**request.__dict__, "context": ConversationContext("acme", "Hi")})
    assert not any("never ask" in m["content"] for m in agent_messages(empty))


def _inputs(message: str, deadline: float) -> StageInputs:
    return cast(
        StageInputs,
        SimpleNamespace(
            turn=_turn(message),
            context=ConversationContext(tenant_id="acme", message=message),
            settings=SimpleNamespace(models=StageModels(agent="gpt-4o-mini")),
            deadline=deadline,
        ),
    )


def test_the_extraction_runs_beside_the_reply_and_counts_in_the_stage_usage(
    openai_api: FakeAPI, cohere_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers = build_providers(settings_for(openai_api, cohere_api))
    monkeypatch.setattr(agents, "get_providers", lambda: providers)
    openai_api.script("facts", Reply(delay_s=0.5))
    began = time.monotonic()
    wait = start_facts(_inputs(MESSAGE, time.time() + 10))
    assert time.monotonic() - began < 0.25  # the reply need not wait for the facts
    usage = Usage(calls=1, tokens_out=5)  # the reply's
    assert wait(usage) == facts_in(MESSAGE)
    assert time.monotonic() - began >= 0.5
    assert (usage.calls, usage.tokens_out) == (2, 5 + 17)


def test_offline_the_facts_are_read_when_the_memory_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offline = Providers(chat=LocalChatModel(), embedder=LocalEmbedder(), reranker=LocalReranker())
    monkeypatch.setattr(agents, "get_providers", lambda: offline)
    usage = Usage()
    assert start_facts(_inputs(MESSAGE, time.time() + 10))(usage) == facts_in(MESSAGE)
    assert usage.calls == 0
