"""Reply tokens through Redis streams, one stream per turn.

The agent appends each token as it arrives, then an ``end`` entry once the turn is
committed in Postgres. A reader resumes from the last entry id it saw. If the agent runs
again for the same turn (a re-delivered or retried task, a re-drive), the new run first
appends a ``restart`` entry: readers drop what they showed of the earlier run. A turn
cancelled by a later message of its conversation gets a ``cancel`` entry (with the reason)
and an ``end`` entry with status ``cancelled``; its agent, if it is streaming, stops at its
next batch of tokens.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from shared.config import get_settings
from shared.redis_conn import get_redis
from shared.runtime import Resource, runtime

log = logging.getLogger(__name__)

MAX_STREAM_LEN = 20_000


def stream_ttl_s() -> int:
    """How long a reply stream (and its run counter) outlives its last entry."""
    return get_settings().stream_ttl_s


def stream_key(turn_id: str) -> str:
    return f"chordline:reply:{turn_id}"


EventKind = Literal["token", "restart", "cancel", "end"]


@dataclass(frozen=True)
class StreamEvent:
    id: str
    kind: EventKind
    text: str = ""
    status: str = ""
    reason: str = ""


def cancel_key(turn_id: str) -> str:
    """Set when the turn is cancelled: its agent's stream writer looks for it."""
    return f"chordline:cancelled:{turn_id}"


def attempts_key(turn_id: str) -> str:
    return f"chordline:reply-attempts:{turn_id}"


# An agent run's first entry: count the run, and when it is not the turn's first, tell
# readers to start over. Done by Redis itself, in the same pipeline as the run's first
# tokens, so a run pays no round trip of its own to begin streaming. Sent with EVAL, not
# EVALSHA: a script in a redis-py pipeline costs a SCRIPT EXISTS round trip per pipeline.
_BEGIN_RUN = """
local attempt = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if attempt > 1 then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'kind', 'restart',
               'attempt', attempt)
end
return attempt
"""


@dataclass
class _Entry:
    turn_id: str
    text: str = ""
    begins_run: bool = False  # an agent run's first entry: counts the run (see _BEGIN_RUN)
    ends_with: str = ""  # the turn's final status: the ``end`` entry, after every token

    @property
    def merges_into_previous(self) -> bool:
        """A token that may travel in the entry before it (never a run's first, nor an end)."""
        return not self.begins_run and not self.ends_with

    @property
    def key(self) -> str:
        return stream_key(self.turn_id)


class _StreamWriter:
    """Appends stream entries of every agent thread in this process, in batches.

    An entry is handed to a background thread, which sends whatever has accumulated as one
    pipeline, then waits a tick (``CHORDLINE_STREAM_TICK_MS``, 50 ms) before the next send.
    The first token of a quiet moment goes out at once; under load, many streams share one
    round trip instead of each token paying its own, and the tokens of one stream that
    arrived within a tick travel as one entry (model APIs send a chunk every few tens of
    milliseconds; a reader sees text at most a tick later than the API sent it). Entries of
    one stream keep their order (one sender at a time). Streaming is best effort: the reply
    itself is committed in Postgres.
    """

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._pending: list[_Entry] = []
        self._untimed: set[str] = set()  # streams begun whose first token has not gone out
        self._watched: set[str] = set()  # turns whose cancellation each send looks for
        self.cancelled: set[str] = set()  # watched turns found cancelled
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._wakeup = threading.Event()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="chordline-stream-writer", daemon=True
        )
        self._thread.start()

    def append(self, entry: _Entry) -> None:
        with self._lock:
            self._pending.append(entry)
        if not self._wakeup.is_set():  # set already: the sender has not taken the batch yet
            self._wakeup.set()

    def flush(self, also: Callable[[Any], None] | None = None) -> list[Any]:
        """Send everything appended so far, before returning; ``also`` adds commands of the
        caller's to the same pipeline, after the entries, and gets their replies back
        (errors among them as exceptions, not raised)."""
        with self._sending:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch and also is None:
                return []
            pipe = get_redis().pipeline(transaction=False)
            looked_up: list[tuple[int, str]] = []  # (command index, turn) of cancel checks
            for entry in _coalesced(batch):
                key = entry.key
                if entry.turn_id in self._watched and entry.text:
                    pipe.exists(cancel_key(entry.turn_id))
                    looked_up.append((len(pipe) - 1, entry.turn_id))
                if entry.begins_run:
                    pipe.eval(
                        _BEGIN_RUN,
                        2,
                        key,
                        attempts_key(entry.turn_id),
                        stream_ttl_s(),
                        MAX_STREAM_LEN,
                    )
                    self._untimed.add(key)
                if entry.ends_with:
                    queue_end(pipe, entry.turn_id, entry.ends_with)
                    self._untimed.discard(key)
                elif entry.text:
                    pipe.xadd(
                        key,
                        {"kind": "token", "text": entry.text},
                        maxlen=MAX_STREAM_LEN,
                        approximate=True,
                    )
                    if key in self._untimed:  # the stream exists now: give it its lifetime
                        pipe.expire(key, stream_ttl_s())
                        self._untimed.discard(key)
            own = len(pipe)
            if also is not None:
                also(pipe)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies[:own]:
                if isinstance(reply, Exception):
                    raise reply
            for index, turn_id in looked_up:
                if replies[index]:
                    self.cancelled.add(turn_id)
            return replies[own:]

    def watch(self, turn_id: str) -> None:
        self._watched.add(turn_id)

    def forget(self, turn_id: str) -> None:
        """The run has ended: its stream's lifetime is set by the end entry, if not before."""
        with self._sending:
            self._untimed.discard(stream_key(turn_id))
            self._watched.discard(turn_id)
            self.cancelled.discard(turn_id)

    def close(self) -> None:
        """Send what is pending, then end the thread."""
        self._closed = True
        self._wakeup.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._closed:
            self._wakeup.wait()
            self._wakeup.clear()
            self._send_pending()
            if not self._closed:
                time.sleep(self.tick_s)
        self._send_pending()

    def _send_pending(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # tokens are best effort; the reply is in Postgres
            log.warning(
                "reply tokens not streamed",
                extra={"action": "stream_failed", "reason": type(exc).__name__},
            )


def _coalesced(batch: list[_Entry]) -> list[_Entry]:
    """Consecutive tokens of one stream become one entry; a run's first entry stays first."""
    last: dict[str, _Entry] = {}
    merged: list[_Entry] = []
    for entry in batch:
        previous = last.get(entry.turn_id)
        if previous is not None and entry.merges_into_previous and not previous.ends_with:
            previous.text += entry.text
            continue
        copy = _Entry(entry.turn_id, entry.text, entry.begins_run, entry.ends_with)
        merged.append(copy)
        last[entry.turn_id] = copy
    return merged


STREAM_WRITER = Resource(
    "reply stream writer",
    make=lambda: _StreamWriter(get_settings().stream_tick_ms / 1000),
    close=_StreamWriter.close,
)


def _stream_writer() -> _StreamWriter:
    return runtime().get(STREAM_WRITER)


class ReplyStream:
    """The writer side, used by the agent of one turn.

    Any agent run after the first one of its turn (a redelivery, a retry, a re-drive by the
    sweeper) starts with a ``restart`` entry, so readers drop the text of the earlier run
    instead of showing two replies. Two copies running at the same moment can interleave,
    and the one that commits first wins: the reply of record is always the turn's
    ``agent_response`` in Postgres, which a reader can fetch once it sees ``end``.
    Streaming is best effort: a Redis failure here is logged, never raised.
    """

    def __init__(self, turn_id: str, *, watch_cancel: bool = False) -> None:
        self.turn_id = turn_id
        self.key = stream_key(turn_id)
        self.writer = _stream_writer()
        if watch_cancel:  # the tenant interrupts: each send of tokens asks, in its round trip
            self.writer.watch(turn_id)
        self.writer.append(_Entry(turn_id, begins_run=True))

    def token(self, text: str) -> None:
        self.writer.append(_Entry(self.turn_id, text))

    @property
    def cancelled(self) -> bool:
        """The turn was cancelled: the send of an earlier batch of its tokens found out."""
        return self.turn_id in self.writer.cancelled

    def close(self) -> None:
        """Every token is in Redis when this returns, unless Redis failed (logged)."""
        try:
            self.writer.flush()
        except Exception as exc:
            _stream_failed(self.turn_id, exc)
        finally:
            self.writer.forget(self.turn_id)

    def end(self, status: str, also: Callable[[Any], None] | None = None) -> list[Any] | None:
        """The turn has ended (its reply is committed): the tokens still on their way, the
        ``end`` entry and ``also``'s commands go out in one round trip, in that order, before
        this returns; the replies to ``also``'s commands, or None when Redis failed (logged).
        The reply's commit does not wait for its last tokens to reach Redis."""
        self.writer.append(_Entry(self.turn_id, ends_with=status))
        try:
            return self.writer.flush(also)
        except Exception as exc:
            _stream_failed(self.turn_id, exc)
            return None
        finally:
            self.writer.forget(self.turn_id)


def _stream_failed(turn_id: str, exc: Exception) -> None:
    log.warning(
        "reply tokens not streamed",
        extra={"action": "stream_failed", "turn_id": turn_id, "reason": type(exc).__name__},
    )


def queue_end(pipe: Any, turn_id: str, status: str) -> None:
    """Add the end entry (and the stream's lifetime) to a pipeline."""
    key = stream_key(turn_id)
    pipe.xadd(key, {"kind": "end", "status": status}, maxlen=MAX_STREAM_LEN, approximate=True)
    pipe.expire(key, stream_ttl_s())


def queue_cancel(pipe: Any, turn_id: str, reason: str) -> None:
    """Add a cancelled turn's marker, its end and the flag its agent looks for to a pipeline."""
    pipe.set(cancel_key(turn_id), "1", ex=stream_ttl_s())
    pipe.xadd(
        stream_key(turn_id),
        {"kind": "cancel", "reason": reason},
        maxlen=MAX_STREAM_LEN,
        approximate=True,
    )
    queue_end(pipe, turn_id, "cancelled")


def publish_end(turn_id: str, status: str) -> None:
    """Tell readers the turn has ended; Postgres already holds the final state."""
    pipe = get_redis().pipeline(transaction=False)
    queue_end(pipe, turn_id, status)
    pipe.execute()


def announce_end(turn_id: str, status: str) -> None:
    """``publish_end``, best effort: readers also find the end in Postgres, the source of
    truth (``wait_for_turn`` checks it at least every second)."""
    try:
        publish_end(turn_id, status)
    except Exception as exc:
        log.warning(
            "end of turn not streamed",
            extra={"action": "stream_end_failed", "turn_id": turn_id, "reason": type(exc).__name__},
        )


def _kind(raw: str) -> EventKind:
    if raw in ("restart", "cancel", "end"):
        return raw  # type: ignore[return-value]
    return "token"


def read_events(turn_id: str, *, after: str = "0", block_ms: int = 1000) -> list[StreamEvent]:
    """Entries after ``after`` (an entry id), waiting up to block_ms for the first one."""
    reply: XreadReply = get_redis().xread(  # type: ignore[assignment]
        {stream_key(turn_id): after}, block=block_ms, count=500
    )
    return events_of(reply)


XreadReply = list[tuple[str, list[tuple[str, dict[str, str]]]]] | None
# A reply stream's entry ids, as XADD makes them ("0" reads from the start).
ENTRY_ID = re.compile(r"^(0|[0-9]{1,20}-[0-9]{1,20})$")


def events_of(reply: XreadReply) -> list[StreamEvent]:
    """The events of an XREAD reply (decoded), in order."""
    events: list[StreamEvent] = []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            events.append(
                StreamEvent(
                    id=entry_id,
                    kind=_kind(fields.get("kind", "token")),
                    text=fields.get("text", ""),
                    status=fields.get("status", ""),
                    reason=fields.get("reason", ""),
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
