"""How an HTTP error of a provider is classified, and that its messages carry no secret."""

from __future__ import annotations

import email.utils
import time

import pytest

from shared.errors import ProviderConfigError
from shared.providers.failures import (
    ProviderUnavailable,
    SecretScrubber,
    retry_after_s,
    safe_url,
    status_failure,
)

KEY = "sk-proj-abcdefghijklmnop1234"


def failure(status: int, body: object, headers: dict[str, str] | None = None) -> Exception:
    return status_failure(
        provider="openai",
        status=status,
        body=body,
        headers=headers or {},
        scrub=SecretScrubber([KEY]),
        key_setting="OPENAI_API_KEY",
        url_setting="OPENAI_BASE_URL",
        model="gpt-x",
        model_setting="the tenant setting models.agent",
        endpoint="https://gateway.example/v1",
    )


def test_retry_after_in_seconds_milliseconds_and_as_a_date() -> None:
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_s({"retry-after": later}) or 0) <= 30
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408, 409])
def test_rate_limits_and_server_errors_are_transient(status: int) -> None:
    exc = failure(status, {"error": {"message": "busy"}}, {"retry-after": "2"})
    assert isinstance(exc, ProviderUnavailable)
    assert exc.retry_after_s == 2.0


def test_a_rejected_key_names_the_setting_and_never_echoes_the_body() -> None:
    exc = failure(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    assert isinstance(exc, ProviderConfigError)
    assert str(exc) == "openai: the API key was rejected (HTTP 401); set a valid OPENAI_API_KEY"


def test_an_unknown_model_names_the_model_and_its_setting() -> None:
    body = {"error": {"message": "The model `gpt-x` does not exist", "code": "model_not_found"}}
    exc = failure(404, body)
    assert isinstance(exc, ProviderConfigError)
    assert "unknown model 'gpt-x'" in str(exc)
    assert str(exc).endswith("fix the tenant setting models.agent")


def test_a_wrong_path_points_at_the_base_url() -> None:
    exc = failure(404, {"error": {"message": "Not Found"}})
    assert isinstance(exc, ProviderConfigError)
    assert "https://gateway.example/v1" in str(exc) and "check OPENAI_BASE_URL" in str(exc)


def test_no_quota_is_permanent() -> None:
    exc = failure(429, {"error": {"message": "quota", "code": "insufficient_quota"}})
    assert isinstance(exc, ProviderConfigError) and "OPENAI_API_KEY" in str(exc)


def test_bad_requests_quote_the_provider_without_secrets() -> None:
    exc = failure(400, {"error": {"message": f"bad value, key {KEY} and Bearer abc.def"}})
    assert isinstance(exc, ProviderConfigError)
    assert KEY not in str(exc) and "abc.def" not in str(exc)
    assert "HTTP 400" in str(exc)


def test_scrubber_removes_configured_and_key_shaped_secrets() -> None:
    scrub = SecretScrubber(["my-own-secret-value"])
    text = scrub("a my-own-secret-value b sk-live-1234567890 c Bearer xyz123 d api_key=hunter2")
    assert text == "a *** b *** c *** d ***"


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://user:pw@gw.example:8443/v1?token=abc") == "https://gw.example:8443/v1"
