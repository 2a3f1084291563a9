"""What a failed provider call means for chordline, and messages safe to show anywhere.

Every SDK exception is turned into one of three chordline errors:

- ``ProviderUnavailable`` (transient: 429, 5xx, timeouts, connection resets, malformed
  responses): the retry loop tries again, within the turn's budget;
- ``ProviderConfigError`` (permanent: 401/403, 400, unknown model, no quota): fails at once
  with a message naming the provider and the setting to fix; ``ProviderRequestRejected``
  is the kind that concerns one request's content (a 400/413/422 about anything but the
  model), so another request, such as the next document of an ingest, may still pass;
- ``InvalidAnswer`` (permanent: a refusal or an answer that does not fit the schema).

Messages never carry an API key: upstream error bodies are reduced to their ``message``,
truncated, and scrubbed of the configured keys and of anything that looks like a key or a
bearer token. The original exception is not chained (``raise ... from None``), so a
traceback that reaches a log cannot show it either.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.errors import PermanentError, ProviderConfigError, ProviderError

MESSAGE_LIMIT = 240
_KEY_LIKE = re.compile(
    r"(?i)(bearer\s+\S+|\b(?:sk|rk|pk|co|ck)[-_][A-Za-z0-9_\-*.]{6,}|api[_-]?key\S*\s*[:=]\s*\S+)"
)


class ProviderUnavailable(ProviderError):
    """A model provider did not answer usefully this time; a retry may succeed."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderBudgetExceeded(ProviderError):
    """The turn's remaining budget is too short for the provider call (or its retry)."""


class ProviderRequestRejected(ProviderConfigError):
    """The provider refused this request (HTTP 400, 413 or 422, not about the model)."""


class InvalidAnswer(PermanentError):
    """The model answered, but with a refusal or an answer that does not fit the schema."""


class SecretScrubber:
    """Removes the configured keys, and anything shaped like a key, from text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _KEY_LIKE.sub("***", text)


def safe_url(url: str | None) -> str:
    """A base URL fit for messages and the doctor: no credentials, query or fragment."""
    if not url:
        return "(the provider's default endpoint)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def upstream_message(body: object, scrub: SecretScrubber) -> str:
    """The human part of an error body (``{"error": {"message": ...}}`` and kin), scrubbed."""
    message: object = body
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            message = error.get("message") or error.get("detail") or ""
        else:
            message = body.get("message") or error
    text = scrub(" ".join(str(message or "").split())).rstrip(".")
    return text[:MESSAGE_LIMIT] + ("..." if len(text) > MESSAGE_LIMIT else "")


def error_code(body: object) -> str:
    """The machine-readable code of an error body, if it has one (``model_not_found``...)."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            return str(error.get("code") or error.get("type") or "")
    return ""


def mentions_unknown_model(body: object, text: str) -> bool:
    lowered = text.lower()
    return error_code(body) == "model_not_found" or (
        "model" in lowered
        and any(w in lowered for w in ("not found", "does not exist", "unknown", "not exist"))
    )


def retry_after_s(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return max(0.0, float(millis) / 1000)
        value = headers.get("retry-after")
    except (TypeError, ValueError):
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def config_error(provider: str, problem: str, fix: str) -> ProviderConfigError:
    """``openai rejected the API key (HTTP 401); set a valid OPENAI_API_KEY``."""
    return ProviderConfigError(f"{provider}: {problem}; {fix}")


def status_failure(
    *,
    provider: str,
    status: int,
    body: object,
    headers: Mapping[str, str] | Any,
    scrub: SecretScrubber,
    key_setting: str,
    url_setting: str,
    model: str,
    model_setting: str,
    endpoint: str,
) -> ProviderUnavailable | ProviderConfigError:
    """The chordline error for an HTTP error status from a provider."""
    text = upstream_message(body, scrub)
    detail = f": {text}" if text else ""
    if status == 429:
        if error_code(body) == "insufficient_quota":
            return config_error(
                provider,
                "the account has no quota left (HTTP 429)",
                f"check the billing of {key_setting}",
            )
        return ProviderUnavailable(
            f"{provider}: rate limited (HTTP 429)", retry_after_s=retry_after_s(headers)
        )
    if status >= 500 or status in (408, 409):
        return ProviderUnavailable(
            f"{provider}: server error (HTTP {status}){detail}",
            retry_after_s=retry_after_s(headers),
        )
    if status in (401, 403):
        # The body is left out on purpose: providers echo part of the rejected key in it.
        return config_error(
            provider, f"the API key was rejected (HTTP {status})", f"set a valid {key_setting}"
        )
    if status in (400, 404, 422) and mentions_unknown_model(body, text):
        return config_error(
            provider,
            f"unknown model {model!r} (HTTP {status}){detail}",
            f"fix {model_setting}",
        )
    if status == 404:
        return config_error(
            provider,
            f"no such endpoint at {endpoint} (HTTP 404){detail}",
            f"check {url_setting}",
        )
    rejected = config_error(
        provider,
        f"the request was rejected (HTTP {status}){detail}",
        f"check {model_setting} and {url_setting}",
    )
    if status in (400, 413, 422):
        return ProviderRequestRejected(str(rejected))
    return rejected
