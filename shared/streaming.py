"""Reply tokens through Redis streams, one stream per turn.

The agent appends each token as it arrives, then an ``end`` entry once the turn is
committed in Postgres. A reader resumes from the last entry id it saw. If an agent attempt
is re-run (a re-delivered task), it first appends a ``restart`` entry: readers drop what
they showed of the earlier attempt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from shared.redis_conn import get_redis

STREAM_TTL_S = 86_400
MAX_STREAM_LEN = 20_000


def stream_key(turn_id: str) -> str:
    return f"chordline:reply:{turn_id}"


EventKind = Literal["token", "restart", "end"]


@dataclass(frozen=True)
class StreamEvent:
    id: str
    kind: EventKind
    text: str = ""
    status: str = ""


class ReplyStream:
    """The writer side, used by the agent of one turn."""

    def __init__(self, turn_id: str, *, attempt: int) -> None:
        self.key = stream_key(turn_id)
        self.redis = get_redis()
        self.attempt = attempt
        self.index = 0
        if attempt > 1:
            self.redis.xadd(
                self.key,
                {"kind": "restart", "attempt": attempt},
                maxlen=MAX_STREAM_LEN,
                approximate=True,
            )

    def token(self, text: str) -> None:
        self.redis.xadd(
            self.key,
            {"kind": "token", "text": text, "i": self.index},
            maxlen=MAX_STREAM_LEN,
            approximate=True,
        )
        if self.index == 0:
            self.redis.expire(self.key, STREAM_TTL_S)
        self.index += 1


def publish_end(turn_id: str, status: str) -> None:
    """Tell readers the turn has ended; Postgres already holds the final state."""
    key = stream_key(turn_id)
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(key, {"kind": "end", "status": status}, maxlen=MAX_STREAM_LEN, approximate=True)
    pipe.expire(key, STREAM_TTL_S)
    pipe.execute()


def _kind(raw: str) -> EventKind:
    return "restart" if raw == "restart" else "end" if raw == "end" else "token"


def read_events(turn_id: str, *, after: str = "0", block_ms: int = 1000) -> list[StreamEvent]:
    """Entries after ``after`` (an entry id), waiting up to block_ms for the first one."""
    reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] = get_redis().xread(  # type: ignore[assignment]
        {stream_key(turn_id): after}, block=block_ms, count=500
    )
    events: list[StreamEvent] = []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            events.append(
                StreamEvent(
                    id=entry_id,
                    kind=_kind(fields.get("kind", "token")),
                    text=fields.get("text", ""),
                    status=fields.get("status", ""),
                )
            )
    return events


def follow(turn_id: str, *, after: str = "0", timeout_s: float = 60.0) -> Iterator[StreamEvent]:
    """Every event after ``after`` until the end entry, or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    cursor = after
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no end of stream for turn {turn_id} within {timeout_s:.0f} s")
        for event in read_events(
            turn_id, after=cursor, block_ms=int(min(remaining, 1.0) * 1000) or 1
        ):
            cursor = event.id
            yield event
            if event.kind == "end":
                return
