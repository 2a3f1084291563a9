"""Fake OpenAI and Cohere servers on loopback, and provider settings that point at them.

The keys are random but recognisable (``sk-chordline-test-...``), so a test can search logs,
exceptions, rows and Redis for them and be sure that a miss means they never got there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import ProviderSettings
from tests.providers.fake_apis import FakeAPI, Reply

OPENAI_KEY = f"sk-chordline-test-{secrets.token_hex(12)}"
COHERE_KEY = f"co-chordline-test-{secrets.token_hex(12)}"
# Fast, bounded retries, so a failing call ends in a second or two.
FAST_RETRIES = {
    "CHORDLINE_PROVIDER_REQUEST_TIMEOUT_S": 1.0,
    "CHORDLINE_PROVIDER_CONNECT_TIMEOUT_S": 1.0,
    "CHORDLINE_PROVIDER_BACKOFF_BASE_S": 0.05,
    "CHORDLINE_PROVIDER_BACKOFF_MAX_S": 0.2,
    "CHORDLINE_PROVIDER_MAX_ATTEMPTS": 3,
}


@pytest.fixture(scope="package")
def openai_server() -> Iterator[FakeAPI]:
    server = FakeAPI("openai", api_key=OPENAI_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def cohere_server() -> Iterator[FakeAPI]:
    server = FakeAPI("cohere", api_key=COHERE_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def openai_api(openai_server: FakeAPI) -> FakeAPI:
    openai_server.reset()
    return openai_server


@pytest.fixture
def cohere_api(cohere_server: FakeAPI) -> FakeAPI:
    cohere_server.reset()
    return cohere_server


def fake_api_env(openai_api: FakeAPI, cohere_api: FakeAPI) -> dict[str, str]:
    """The environment of a process that uses the fake APIs."""
    return {
        "CHORDLINE_PROVIDERS": "auto",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai_api.base_url,
        "COHERE_API_KEY": COHERE_KEY,
        "COHERE_BASE_URL": cohere_api.base_url,
        **{name: str(value) for name, value in FAST_RETRIES.items()},
    }


def settings_for(openai_api: FakeAPI, cohere_api: FakeAPI, **overrides: Any) -> ProviderSettings:
    values: dict[str, Any] = {**fake_api_env(openai_api, cohere_api), **overrides}
    return ProviderSettings(**values)


def timeout_for(reply: Reply) -> dict[str, Any]:
    """A short request timeout for a scripted slow answer, so the test does not wait long."""
    return {"CHORDLINE_PROVIDER_REQUEST_TIMEOUT_S": 0.3} if reply.delay_s else {}
