"""The HTTP API's application: versioned routes under ``/v1``, health, the OpenAPI schema.

Every route calls the same functions the Python client offers (``enqueue_turn``,
``get_turn``, the turn summary and trace, the reply stream) and holds nothing between
requests: any number of web processes serve the same turns. Sync routes run in the server's
thread pool (the client's calls block on Postgres); the reply stream is read on the event
loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from shared.api.auth import ApiCaller
from shared.api.limits import BodyLimit
from shared.api.models import (
    ConversationOut,
    Health,
    Problem,
    Readiness,
    TraceOut,
    TurnAccepted,
    TurnBrief,
    TurnLinks,
    TurnOut,
    TurnRequest,
)
from shared.api.pages import install_pages
from shared.api.problems import install_problem_handlers, problem_responses
from shared.api.sse import SSE_EVENT_SCHEMA, SSE_MEDIA_TYPE, check_event_id, reply_events
from shared.client import TurnView, enqueue_turn, get_turn
from shared.config import get_settings
from shared.db.api_keys import Caller
from shared.db.conversations import conversation_of
from shared.db.migrations import schema_heads
from shared.db.session import session_scope, transient_database_failures
from shared.db.spans import spans_of
from shared.db.turns import load_turn
from shared.errors import InvalidInput, TurnNotFound
from shared.redis_conn import redis_url
from shared.streaming import ENTRY_ID
from shared.trace import trace_of
from shared.turn_summary import summarise_turn
from shared.validation import check_idempotency_key, check_slug, check_turn_id

API_TITLE = "chordline"
API_DESCRIPTION = (
    "Turns of sales and support conversations in, replies streamed out. Every /v1 route "
    "takes a tenant's API key as `Authorization: Bearer <key>`; errors are "
    "application/problem+json (RFC 9457)."
)
AUTHED = (401, 429, 503)

TurnId = Annotated[
    str, Path(description="The turn's id (a UUID)", json_schema_extra={"format": "uuid"})
]
ConversationId = Annotated[str, Path(description="The caller's id of the conversation")]


# OpenAPI links: where the id a created turn returns goes next (clients and fuzzers follow).
TURN_LINKS: dict[str, Any] = {
    name: {"operationId": operation, "parameters": {"turn_id": "$response.body#/turn_id"}}
    for name, operation in (
        ("turn", "read_turn"),
        ("stream", "stream_reply"),
        ("trace", "read_trace"),
    )
} | {
    "conversation": {
        "operationId": "read_conversation",
        "parameters": {"conversation_id": "$response.body#/conversation_id"},
    }
}


def links(turn_id: str) -> TurnLinks:
    return TurnLinks(
        turn=f"/v1/turns/{turn_id}",
        stream=f"/v1/turns/{turn_id}/stream",
        trace=f"/v1/turns/{turn_id}/trace",
        page=f"/turns/{turn_id}",
    )


def _turn_id(value: str) -> str:
    return check_turn_id(value, field="turn_id")


def _conversation_id(value: str) -> str:
    return check_slug("conversation_id", value, max_chars=get_settings().turn.max_id_chars)


def _not_found(turn_id: str) -> TurnNotFound:
    return TurnNotFound(f"turn {turn_id} does not exist")


def owned_view(caller: Caller, turn_id: str) -> TurnView:
    """The turn, if the caller's tenant owns it; another tenant's turn does not exist."""
    view = get_turn(turn_id)
    if view.tenant_id != caller.tenant_id:
        raise _not_found(turn_id)
    return view


def accept(caller: Caller, conversation: str, body: TurnRequest, key: str | None) -> TurnAccepted:
    conversation = _conversation_id(conversation)
    try:
        key = check_idempotency_key(key)
    except InvalidInput as exc:
        raise InvalidInput("Idempotency-Key", exc.problem) from None
    turn_id = enqueue_turn(caller.tenant_id, conversation, body.message, idempotency_key=key)
    return TurnAccepted(turn_id=turn_id, conversation_id=conversation, links=links(turn_id))


def turn_out(caller: Caller, turn_id: str) -> TurnOut:
    turn_id = _turn_id(turn_id)
    with transient_database_failures(), session_scope() as session:
        summary = summarise_turn(session, turn_id)
    if summary.tenant_id != caller.tenant_id:
        raise _not_found(turn_id)
    fields = summary.as_dict()
    fields["conversation_id"] = fields.pop("conversation")
    return TurnOut(**fields, links=links(turn_id))


def trace_out(caller: Caller, turn_id: str) -> TraceOut:
    turn_id = _turn_id(turn_id)
    with transient_database_failures(), session_scope() as session:
        turn = load_turn(session, turn_id)
        if turn.tenant_id != caller.tenant_id:
            raise _not_found(turn_id)
        trace = trace_of(turn, spans_of(session, turn_id))
    return TraceOut.model_validate(trace.as_dict())


def conversation_out(caller: Caller, conversation: str, limit: int) -> ConversationOut:
    conversation = _conversation_id(conversation)
    with transient_database_failures(), session_scope() as session:
        view = conversation_of(
            session, tenant_id=caller.tenant_id, conversation=conversation, limit=limit
        )
    return ConversationOut(
        id=view.id,
        qualification_status=view.qualification_status,
        memory=view.memory,
        created_at=view.created_at,
        updated_at=view.updated_at,
        turns=[TurnBrief(**vars(t)) for t in view.turns],
    )


def readiness_checks(heads: set[str]) -> dict[str, str]:
    """One line per dependency: ``ok`` or what is wrong with it."""
    from shared.db.direct import direct_connection
    from shared.redis_conn import get_redis

    checks: dict[str, str] = {}
    try:
        with direct_connection() as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        checks["postgres"] = "ok"
        current = {str(r[0]) for r in rows}
        checks["migrations"] = (
            "ok"
            if current == heads
            else f"schema at {', '.join(sorted(current)) or 'none'}, the latest is "
            f"{', '.join(sorted(heads))}; run `chordline migrate`"
        )
    except Exception as exc:
        checks["postgres"] = f"DATABASE_URL: {type(exc).__name__}: {str(exc)[:200]}"
        checks["migrations"] = "not checked: postgres failed"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"REDIS_URL: {type(exc).__name__}: {str(exc)[:200]}"
    return checks


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = None
    yield
    if app.state.redis is not None:
        await app.state.redis.aclose()


def async_redis(app: FastAPI) -> aioredis.Redis:
    if app.state.redis is None:
        app.state.redis = aioredis.Redis.from_url(
            redis_url(), decode_responses=True, socket_connect_timeout=5, health_check_interval=10
        )
    client: aioredis.Redis = app.state.redis
    return client


def create_app() -> FastAPI:
    settings = get_settings()
    heads = schema_heads()
    app = FastAPI(
        title=API_TITLE,
        version="1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
    )
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.web.max_body_bytes)

    @app.post(
        "/v1/conversations/{conversation_id}/turns",
        status_code=202,
        response_model=TurnAccepted,
        operation_id="create_turn",
        responses={
            202: {"description": "Accepted", "links": TURN_LINKS},
            **problem_responses(*AUTHED, 409, 413, 422),
        },
        tags=["turns"],
        summary="Send a message: accept a turn in the conversation",
    )
    def create_turn(
        caller: ApiCaller,
        conversation_id: ConversationId,
        body: TurnRequest,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="The same key returns the same turn; with another message or "
                "conversation it is a 409",
            ),
        ] = None,
    ) -> TurnAccepted:
        accepted = accept(caller, conversation_id, body, idempotency_key)
        response.headers["Location"] = accepted.links.turn
        return accepted

    @app.get(
        "/v1/turns/{turn_id}",
        response_model=TurnOut,
        operation_id="read_turn",
        responses=problem_responses(*AUTHED, 404, 422),
        tags=["turns"],
        summary="A turn: status, agent, knowledge level, routing reason, reply, timings",
    )
    def read_turn(caller: ApiCaller, turn_id: TurnId) -> TurnOut:
        return turn_out(caller, turn_id)

    @app.get(
        "/v1/turns/{turn_id}/trace",
        response_model=TraceOut,
        operation_id="read_trace",
        responses=problem_responses(*AUTHED, 404, 422),
        tags=["turns"],
        summary="A turn's stages on one time axis",
    )
    def read_trace(caller: ApiCaller, turn_id: TurnId) -> TraceOut:
        return trace_out(caller, turn_id)

    @app.get(
        "/v1/turns/{turn_id}/stream",
        response_class=StreamingResponse,
        operation_id="stream_reply",
        responses={
            200: {
                "description": "Server-sent events: token, restart, end (then the response "
                "ends); `: heartbeat` comments while quiet",
                "content": {SSE_MEDIA_TYPE: {"schema": SSE_EVENT_SCHEMA}},
            },
            **problem_responses(*AUTHED, 404, 422),
        },
        tags=["turns"],
        summary="The reply as server-sent events, resumable with Last-Event-ID",
    )
    async def stream_reply(
        request: Request,
        caller: ApiCaller,
        turn_id: TurnId,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                description="Resume after this event id",
                json_schema_extra={"pattern": ENTRY_ID.pattern},
            ),
        ] = None,
        after: Annotated[
            str | None,
            Query(
                description="Resume after this event id (for clients that cannot set headers)",
                json_schema_extra={"pattern": ENTRY_ID.pattern},
            ),
        ] = None,
    ) -> StreamingResponse:
        turn_id = _turn_id(turn_id)
        cursor = check_event_id(
            last_event_id or after or "0", field="Last-Event-ID" if last_event_id else "after"
        )
        await run_in_threadpool(owned_view, caller, turn_id)

        async def turn_now() -> TurnView:
            return await run_in_threadpool(get_turn, turn_id)

        web = settings.web
        events = reply_events(
            async_redis(request.app),
            turn_id,
            after=cursor,
            heartbeat_s=web.heartbeat_s,
            timeout_s=web.stream_timeout_s,
            turn_now=turn_now,
        )
        return StreamingResponse(
            events,
            media_type=SSE_MEDIA_TYPE,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/conversations/{conversation_id}",
        response_model=ConversationOut,
        operation_id="read_conversation",
        responses=problem_responses(*AUTHED, 404, 422),
        tags=["conversations"],
        summary="A conversation: its turns, memory and qualification status",
    )
    def read_conversation(
        caller: ApiCaller,
        conversation_id: ConversationId,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many turns")] = 200,
    ) -> ConversationOut:
        return conversation_out(caller, conversation_id, limit)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The process answers")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"description": "Not ready", "model": Readiness}},
        tags=["health"],
        summary="Postgres and Redis answer, and the schema is at the latest migration",
    )
    def readyz() -> Any:
        checks = readiness_checks(heads)
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(status="ready" if ready else "not ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    install_pages(app)
    _document_problems(app)
    return app


def _document_problems(app: FastAPI) -> None:
    """The Problem schema in the OpenAPI components (routes refer to it by $ref)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
