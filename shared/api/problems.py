"""Every error of the HTTP API as ``application/problem+json`` (RFC 9457).

chordline's own errors keep their one-line messages, which name the field and the limit:
the ``detail`` is that line, ``field`` the field (or header) at fault, ``limit`` the number
when one was exceeded. FastAPI's request validation errors, unknown routes and wrong methods
answer the same way. Anything unexpected is a 500 whose detail names no internals; the
exception is logged with the request's path.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import (
    BodyTooLarge,
    ChordlineError,
    ConversationBusy,
    ConversationNotFound,
    IdempotencyConflict,
    InvalidInput,
    RateLimited,
    TransientError,
    TurnNotFound,
    Unauthenticated,
)

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TRANSIENT_RETRY_AFTER_S = 1
FASTAPI_BODY_ERROR = "There was an error parsing the body"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "body-too-large",
    422: "invalid-input",
    429: "rate-limited",
    500: "internal-error",
    503: "unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:chordline:problem:{SLUGS.get(status, 'error')}",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update({k: v for k, v in extensions.items() if v is not None})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def status_of(exc: ChordlineError) -> int:
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, TurnNotFound | ConversationNotFound):
        return 404
    if isinstance(exc, IdempotencyConflict | ConversationBusy):
        return 409
    if isinstance(exc, BodyTooLarge):
        return 413
    if isinstance(exc, InvalidInput):
        return 422
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, TransientError):
        return 503
    return 500


def chordline_problem(exc: ChordlineError, *, instance: str | None) -> JSONResponse:
    status = status_of(exc)
    headers: dict[str, str] = {}
    field = getattr(exc, "field", None)
    limit = getattr(exc, "limit", None)
    detail = str(exc)
    if isinstance(exc, IdempotencyConflict):
        field = "Idempotency-Key"
        detail = f"Idempotency-Key: {exc.problem}"
    if isinstance(exc, Unauthenticated):
        field = "Authorization"
        headers["WWW-Authenticate"] = 'Bearer realm="chordline"'
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif status == 503:
        headers["Retry-After"] = str(TRANSIENT_RETRY_AFTER_S)
    if status == 500:
        log.error("request failed", extra={"action": "api_error", "reason": detail})
        detail = "the request failed inside chordline; it is logged"
    return problem(status, detail, instance=instance, headers=headers, field=field, limit=limit)


def _location(loc: tuple[Any, ...]) -> str:
    """``('body', 'message')`` → ``message``; ``('header', 'idempotency-key')`` →
    ``Idempotency-Key``."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "header" and len(parts) > 1:
        return "-".join(w.capitalize() for w in parts[1].replace("_", "-").split("-"))
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(exc: RequestValidationError, *, instance: str) -> JSONResponse:
    errors = [
        {"field": "body", "detail": "is not valid JSON"}
        if e.get("type") == "json_invalid"
        else {"field": _location(tuple(e.get("loc", ()))), "detail": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"field": "body", "detail": "invalid"}
    detail = f"{first['field']}: {first['detail'][:1].lower()}{first['detail'][1:]}"
    return problem(422, detail, instance=instance, field=first["field"], errors=errors)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_chordline_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ChordlineError)
        return chordline_problem(exc, instance=request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc, instance=request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 400 and detail == FASTAPI_BODY_ERROR:  # e.g. not UTF-8
            return problem(
                422, "body: is not JSON in UTF-8", instance=request.url.path, field="body"
            )
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path: {request.url.path} (the API is under /v1, see /docs)"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(
            exc.status_code, detail, instance=request.url.path, headers=dict(exc.headers or {})
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", extra={"action": "api_error", "reason": type(exc).__name__})
        return problem(
            500, "the request failed inside chordline; it is logged", instance=request.url.path
        )

    app.add_exception_handler(ChordlineError, on_chordline_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer with."""
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
