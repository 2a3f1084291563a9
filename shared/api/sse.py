"""A turn's reply as server-sent events, read from the turn's reply stream in Redis.

Each stream entry becomes one event whose ``id`` is the entry's id, so a client that lost
its connection sends ``Last-Event-ID`` and gets exactly the entries after it:

- ``token``: ``{"text": ...}``, the text the agent produced since the previous token;
- ``restart``: ``{}``, the agent ran again: drop the text shown so far;
- ``end``: ``{"status", "reply", "agent", "kb_information_level"}``, read from Postgres,
  the reply of record; the response ends after it.

While the stream is quiet a comment line (``: heartbeat``) goes out every
``CHORDLINE_WEB_HEARTBEAT_S``, so proxies keep the connection open. After a quiet second
the turn's row in Postgres is read: a turn that has ended (its end entry lost, or its
stream expired) is ended here too. A stream without its end after
``CHORDLINE_WEB_STREAM_TIMEOUT_S`` is closed with a ``timeout`` event; the client resumes.
A failure once the response has begun (Redis lost mid-stream) ends it with an ``error``
event; the client resumes from the last id it saw. The reads block in Redis on the event
loop (redis.asyncio), so an open stream holds no thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from shared.client import TurnView
from shared.errors import InvalidInput
from shared.streaming import ENTRY_ID, StreamEvent, XreadReply, events_of, stream_key

log = logging.getLogger(__name__)

QUIET_BLOCK_MS = 1000
SSE_MEDIA_TYPE = "text/event-stream"
# One event of the stream, as the OpenAPI schema documents it.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["token", "restart", "end", "timeout", "error"]},
        "id": {"type": "string", "description": "Send it back as Last-Event-ID to resume"},
        "data": {
            "type": "string",
            "description": 'JSON: token {"text"}, restart {}, end {"status", "reply", '
            '"agent", "kb_information_level"}, timeout {"resume_after"}, error {"detail"}',
        },
    },
    "required": ["event", "data"],
}


MAX_ENTRY_PART = 2**64 - 1  # each half of a Redis stream id is an unsigned 64-bit number


def check_event_id(value: str, *, field: str) -> str:
    """A reply stream's entry id (``"0"``: from the start), or InvalidInput naming the field."""
    if ENTRY_ID.match(value) and all(int(part) <= MAX_ENTRY_PART for part in value.split("-")):
        return value
    raise InvalidInput(field, f"{value[:40]!r} is not an event id of this stream")


def sse_event(kind: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id else []
    lines += [f"event: {kind}", f"data: {json.dumps(data, ensure_ascii=False)}"]
    return "\n".join(lines) + "\n\n"


def end_event(view: TurnView, event_id: str | None) -> str:
    return sse_event(
        "end",
        {
            "status": view.status,
            "reply": view.agent_response,
            "agent": view.next_agent,
            "kb_information_level": view.kb_information_level,
        },
        event_id,
    )


def _event_text(event: StreamEvent) -> str:
    if event.kind == "restart":
        return sse_event("restart", {}, event.id)
    return sse_event("token", {"text": event.text}, event.id)


async def reply_events(
    client: aioredis.Redis,
    turn_id: str,
    *,
    after: str,
    heartbeat_s: float,
    timeout_s: float,
    turn_now: Callable[[], Awaitable[TurnView]],
) -> AsyncIterator[str]:
    """The SSE text of the reply after entry ``after``, until the end (or the timeout)."""
    key = stream_key(turn_id)
    deadline = time.monotonic() + timeout_s
    yield "retry: 1000\n\n"
    try:
        async for text in _follow(client, key, after, deadline, heartbeat_s, turn_now):
            yield text
    except Exception as exc:  # the response has begun: say so in the stream, then end it
        log.warning(
            "reply stream failed",
            extra={"action": "sse_failed", "turn_id": turn_id, "reason": type(exc).__name__},
        )
        yield sse_event("error", {"detail": f"the stream failed ({type(exc).__name__}); resume"})


async def _follow(
    client: aioredis.Redis,
    key: str,
    cursor: str,
    deadline: float,
    heartbeat_s: float,
    turn_now: Callable[[], Awaitable[TurnView]],
) -> AsyncIterator[str]:
    last_sent = time.monotonic()
    while (remaining := deadline - time.monotonic()) > 0:
        block_ms = max(1, int(min(remaining, heartbeat_s, QUIET_BLOCK_MS / 1000) * 1000))
        reply: XreadReply = await client.xread(  # type: ignore[assignment]
            {key: cursor}, block=block_ms, count=500
        )
        events = events_of(reply)
        for event in events:
            cursor = event.id
            if event.kind == "end":
                yield end_event(await turn_now(), event.id)
                return
            yield _event_text(event)
        if events:
            last_sent = time.monotonic()
            continue
        view = await turn_now()  # quiet: has the turn ended without an end entry?
        if view.ended:
            yield end_event(view, None)
            return
        if time.monotonic() - last_sent >= heartbeat_s:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
    yield sse_event("timeout", {"resume_after": cursor})
