"""`chordline doctor` against the fake APIs: what it prints, and that it prints no secret."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from shared.config import reset_settings
from shared.providers.registry import reset_providers
from shared.tools.cli.main import app
from tests.providers.conftest import COHERE_KEY, OPENAI_KEY, fake_api_env
from tests.providers.fake_apis import FakeAPI, Reply


@pytest.fixture
def doctor_env(
    monkeypatch: pytest.MonkeyPatch, openai_api: FakeAPI, cohere_api: FakeAPI
) -> Iterator[dict[str, str]]:
    env = fake_api_env(openai_api, cohere_api)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    reset_providers()
    yield env
    monkeypatch.undo()
    reset_settings()
    reset_providers()


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", "--providers-only", *args])
    return result.exit_code, result.stdout  # the report; a failure also adds a line on stderr


def test_doctor_shows_each_stage_answering(
    doctor_env: dict[str, str], openai_api: FakeAPI, cohere_api: FakeAPI
) -> None:
    code, output = doctor("--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["mode"] == "auto"
    assert [(s["stage"], s["provider"], s["model"], s["ok"]) for s in report["stages"]] == [
        ("orchestrator", "openai", "gpt-4o-mini", True),
        ("agent", "openai", "gpt-4o-mini", True),
        ("facts", "openai", "gpt-4o-mini", True),  # Structured Outputs on the agent's model
        ("embedding", "openai", "text-embedding-3-small", True),
        ("rerank", "cohere", "rerank-v3.5", True),
    ]
    assert report["stages"][3]["detail"] == "answers; 1536-dimensional vectors"
    # cheap calls only: one model list, one embedding, one rerank
    assert [c.path for c in openai_api.requests] == ["/v1/models", "/v1/embeddings"]
    assert [c.path for c in cohere_api.requests] == ["/v2/rerank"]
    assert OPENAI_KEY not in output and COHERE_KEY not in output


def test_doctor_reports_a_rejected_key_and_a_dead_server_without_secrets(
    doctor_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cohere_api: FakeAPI
) -> None:
    wrong = "sk-chordline-wrong-key-for-doctor-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    cohere_api.script("rerank", Reply(delay_s=3))
    reset_settings()
    code, output = doctor("--timeout", "0.5", "--json")
    assert code == 1
    details = {s["stage"]: (s["ok"], s["detail"]) for s in json.loads(output)["stages"]}
    assert details["orchestrator"] == (
        False,
        "openai: the API key was rejected (HTTP 401); set a valid OPENAI_API_KEY",
    )
    assert details["rerank"][0] is False and "timed out" in details["rerank"][1]
    code, table = doctor("--timeout", "0.5")
    assert code == 1 and "OPENAI_API_KEY" in table
    for shown in (output, table):
        assert wrong not in shown and COHERE_KEY not in shown and OPENAI_KEY not in shown


def test_doctor_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORDLINE_PROVIDERS", "offline")
    reset_settings()
    try:
        code, output = doctor("--json")
    finally:
        monkeypatch.undo()
        reset_settings()
    assert code == 0
    stages = json.loads(output)["stages"]
    assert {s["provider"] for s in stages} == {"local"}
    assert [s["model"] for s in stages if s["stage"] == "facts"] == ["patterns"]


def test_the_demo_runs_on_the_model_apis_when_keys_are_set(
    doctor_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import InvalidInput
    from shared.tools.cli.providers import SIMULATED_DEMO_ENV, demo_env

    assert demo_env("auto") == {}  # the workers inherit the keys and use the APIs
    assert demo_env("none") == {"CHORDLINE_PROVIDERS": "offline"}
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "COHERE_API_KEY", "COHERE_BASE_URL"):
        monkeypatch.delenv(name)
    reset_settings()
    assert demo_env("auto") == SIMULATED_DEMO_ENV
    with pytest.raises(InvalidInput, match="--latency"):
        demo_env("fast")
