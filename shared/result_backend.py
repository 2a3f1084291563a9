"""Celery's Redis result backend, as chordline runs it: the chord's bookkeeping, in fewer
round trips, and nothing for results that nobody waits on.

A turn's chord is two header tasks (orchestrator, researcher) and the merge. Celery keeps its
state in Redis under the group's keys (celery.backends.redis, 5.7): the size (``.s``), the
header results (``.j``), the parts recorded (``.d``), and a claim (``.c``) that lets exactly
one worker publish the merge (``done`` once it has). chordline keeps every key, its type and
every step of that protocol, so that a chord whose header tasks ran on workers of different
versions still completes once, and changes only how many round trips they take:

- **the size**: Celery deletes the claim and sets the size in two round trips, between the
  publishes of the first and the last header task; here, one pipeline.
- **the last part**: Celery records it and claims the chord in one script, then reads the
  group's saved result (a GET that finds nothing for a chord of plain tasks, as every turn's
  is), then the header results (a second round trip), then extends its claim to cover the
  publish (a third), and only then publishes the merge. Here one script records the part,
  claims the chord for the time the publish may take, and returns the results with the
  claim. A chord whose group result was saved (a header of groups) takes Celery's own path.

A turn's merge is pushed onto its queue by shared/task_messages.py (the message Celery's
``delay`` would send); any other chord's callback is published by Celery. The release of
the claim and the ``done`` mark after it, and a failed header part (the chord's error, as
Celery raises it) are Celery's own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from functools import cached_property
from typing import Any, cast

from celery.backends.redis import RedisBackend
from celery.canvas import maybe_signature
from celery.exceptions import ChordError

from shared.contract import MERGE_TASK
from shared.task_messages import MERGE_OPTIONS, push, task_message

log = logging.getLogger(__name__)

# Celery's CHORD_PART_RETURN_LUA (celery/backends/redis.py, 5.7) with two changes: a chord
# whose group result was saved is left to Celery (-2, nothing recorded; so the group key's
# expiry, Celery's ARGV[6], is not needed here), and the claim of a complete chord comes
# back with the header results, read in the same script.
_RECORD_PART_AND_CLAIM = """
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, ordered, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expires = tonumber(ARGV[5])
local claim_expires = tonumber(ARGV[6])
local claim_token = ARGV[7]

if redis.call('EXISTS', gkey) == 1 then
    return {-2, 0, 0, 0, {}}
end
if redis.call('GET', ckey) == 'done' then
    return {-1, 0, 0, 0, {}}
end
local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
    if ordered == '1' then
        redis.call('ZADD', jkey, score, value)
    else
        redis.call('RPUSH', jkey, value)
    end
    redis.call('SADD', dkey, member)
end
local readycount
if ordered == '1' then
    readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    readycount = redis.call('LLEN', jkey)
end
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, expires)
    end
end

local totaldiff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
local claimed = 0
local results = {}
if size and readycount == tonumber(size) + tonumber(totaldiff or 0) then
    if redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then
        claimed = 1
        if ordered == '1' then
            results = redis.call('ZRANGE', jkey, 0, -1)
        else
            results = redis.call('LRANGE', jkey, 0, -1)
        end
    end
end
return {readycount, totaldiff or 0, size or 0, claimed, results}
"""
CHORD_KEYS = (".c", ".j", ".t", ".s", ".d")  # claim, results, size diff, size, parts
LEFT_TO_CELERY = -2
ALREADY_DONE = -1


class RedisResultBackend(RedisBackend):
    """Celery's Redis backend without the per-publish result subscription, and with a
    chord's bookkeeping in fewer round trips (see the module's docstring).

    Celery subscribes the publisher to every task's result channel (and, for a chord, to
    its header tasks' channels as it builds the group result), so that ``AsyncResult.get()``
    can be woken up. chordline never waits on Celery results (Postgres holds every stage's
    output), so each publish would only pay for SUBSCRIBE round trips and leave
    subscriptions behind; and with Redis down, the chord's subscription would fail with a
    RuntimeError before the publish itself could report the outage. Chord counting does not
    depend on it.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result  # nobody waits on it: no drainer, no subscription

    def on_result_fulfilled(self, result: Any) -> None:
        return None  # nothing was subscribed, so there is nothing to unsubscribe

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        """As Celery's (the claim of an earlier run of the same chord cleared, then the
        size), in one round trip instead of two. Celery sets the size just before it
        publishes a chord's last header task, so each round trip saved here is one sooner
        that the last header stage starts."""

        def clear_claim_and_set_size() -> None:
            with self.client.pipeline(transaction=False) as pipe:
                self.add_chord_size(pipe, group_id, chord_size)
                pipe.execute()

        self.ensure(clear_claim_and_set_size, ())

    def add_chord_size(self, pipe: Any, group_id: str, chord_size: int) -> None:
        """``set_chord_size``'s commands, added to a pipeline that sends more after them (a
        turn's header tasks, shared/task_messages.py)."""
        expires = cast(Any, self).chord_expires or None  # Celery's, as its own method sets
        pipe.delete(self.get_key_for_group(group_id, ".c"))
        pipe.set(self.get_key_for_group(group_id, ".s"), chord_size, ex=expires)

    def on_chord_part_return(
        self, request: Any, state: str, result: Any, propagate: Any = None, **kwargs: Any
    ) -> None:
        """Record a header task's result; the part that completes the chord claims it, gets
        the header results in the same round trip, and publishes the callback."""
        backend = cast(Any, self)
        tid, gid = request.id, request.group
        if not gid or not tid:
            return
        group_index = "+inf" if request.group_index is None else request.group_index
        callback = maybe_signature(request.chord, app=backend.app)
        join_claim_s = max(5, int((backend.app.conf.result_chord_join_timeout or 5.0) * 2))
        # No join to wait for: the claim covers the publish (and its retries) from the start,
        # where Celery extends it once the results are read.
        claim_s = backend._chord_publish_claim_expires(join_claim_s, callback)
        claim_token = uuid.uuid4().hex
        keys = {suffix: self.get_key_for_group(gid, suffix) for suffix in CHORD_KEYS}
        readycount, _, size, claimed, results = self._record_part_script(
            keys=[
                *(keys[s] for s in (".j", ".t", ".s", ".d")),
                self.get_key_for_group(gid),
                keys[".c"],
            ],
            args=[
                tid,
                self.encode([1, tid, state, backend.encode_result(result, state)]),
                1 if backend._chord_zset else 0,
                group_index,
                backend.chord_expires or 0,
                claim_s,
                claim_token,
            ],
            client=self.client,
        )
        if readycount == LEFT_TO_CELERY:
            super().on_chord_part_return(request, state, result, propagate=propagate, **kwargs)
            return
        # the script claims a chord only once every part is in
        if readycount == ALREADY_DONE or not int(size) or not claimed:
            return
        done_s = int(max(join_claim_s * 2, 300))  # how long the done mark stays, as Celery's
        self._publish_callback(callback, gid, results, keys, (claim_token, done_s))

    def _send_callback(self, callback: Any, values: list[Any]) -> None:
        """A turn's merge straight onto its queue (shared/task_messages.py); any other
        chord's callback through Celery."""
        app = cast(Any, self).app
        options = callback.options
        if (
            callback.task == MERGE_TASK
            and not callback.immutable
            and not callback.args
            and set(options) <= MERGE_OPTIONS
        ):
            message = task_message(
                app,
                MERGE_TASK,
                callback.kwargs,
                task_id=options.get("task_id"),
                args=(values,),
                group_id=options.get("group_id"),
                reply_to=options.get("reply_to"),
            )
            push(app, self.client, [message])
            return
        app.amqp._retry_publish(callback.delay, values)

    @cached_property
    def _record_part_script(self) -> Any:
        return self.client.register_script(_RECORD_PART_AND_CLAIM)

    def _publish_callback(
        self,
        callback: Any,
        gid: str,
        results: Sequence[bytes],
        keys: dict[str, str],
        claim: tuple[str, int],
    ) -> Any:
        """Celery's end of a chord: the header results decoded (a failed one fails the
        chord), the callback published, then the claim released and the chord marked done."""
        backend = cast(Any, self)
        try:
            values = [backend._unpack_chord_result(tup, self.decode) for tup in results]
        except ChordError as exc:
            log.warning(
                "chord failed: a header task failed",
                extra={"action": "chord_failed", "group_id": gid, "reason": str(exc)[:500]},
            )
            try:
                return self.chord_error_from_stack(callback, exc)
            finally:
                # As Celery does: a copy of a header task arriving later does not fail the
                # chord again.
                self.client.delete(keys[".s"])
        try:
            self._send_callback(callback, values)
        except Exception as exc:  # Celery's own handling of a failed publish
            log.exception(
                "chord callback not published",
                extra={"action": "chord_callback_failed", "group_id": gid},
            )
            return self.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))
        finally:
            cleaned = backend._chord_cleanup_script(
                keys=[keys[suffix] for suffix in CHORD_KEYS],
                args=list(claim),
                client=self.client,
            )
            if not cleaned:
                log.warning(
                    "chord claim lost before its cleanup; its data is left to expire",
                    extra={"action": "chord_claim_lost", "group_id": gid},
                )
        return None
