"""The turn row and its conversation: every write to either, each by its actor.

Who may write which fields, and which status changes are legal, is declared once in
shared/turn_state.py; every write here goes through it. A stage's write is checked when it
is made: one that tries to write outside its fields fails loudly with
``OwnershipViolation``, before the database sees the statement. The fixed statements are
built from the rules when this module is imported, and their ``WHERE status IN (...)``
guards are rendered from the declared transitions. Every stage write is a conditional
UPDATE (``WHERE <owned output> IS NULL``), so a re-delivered task changes nothing twice.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from shared.db.direct import transaction_pipeline
from shared.db.models import Conversation, Turn, TurnOutbox
from shared.db.spans import INSERT_SPAN_FROM, SpanRecord, span_params
from shared.errors import ConversationBusy, IllegalTransition, TurnNotFound
from shared.ids import time_ordered_uuid
from shared.schemas import Qualification, Stage, TurnStatus
from shared.turn_state import (
    AWAITING_CONVERSATION,
    GRANTS,
    STAGE_ACTORS,
    STAGE_OUTPUT,
    Actor,
    Table,
    assignments,
    check_transition,
    check_write,
    columns,
    sources,
    sql_in,
    sql_status,
    status_guard,
)


class TurnRecord(Protocol):
    """What stages read of a turn: an ORM ``Turn`` or a plain result row of ``turns``."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def conversation_id(self) -> uuid.UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def carried_message(self) -> str | None: ...
    @property
    def topology(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def accepted_at(self) -> float: ...
    @property
    def released_at(self) -> float | None: ...
    @property
    def phase(self) -> str | None: ...
    @property
    def intent(self) -> str | None: ...
    @property
    def proposed_agent(self) -> str | None: ...
    @property
    def confidence(self) -> float | None: ...
    @property
    def handoff(self) -> bool | None: ...
    @property
    def orchestration_note(self) -> str | None: ...
    @property
    def orchestrated_at(self) -> float | None: ...
    @property
    def research_results(self) -> list[Any] | None: ...
    @property
    def kb_information_level(self) -> str | None: ...
    @property
    def research_note(self) -> str | None: ...
    @property
    def researched_at(self) -> float | None: ...
    @property
    def next_agent(self) -> str | None: ...
    @property
    def routing_reason(self) -> str | None: ...
    @property
    def routed_at(self) -> float | None: ...
    @property
    def completed_at(self) -> float | None: ...


@dataclass(frozen=True)
class Interruption:
    """A turn cancelled by a later message of its conversation, and what the later turn
    carries of it."""

    turn_id: str
    tenant_id: str
    carried: str  # its message (with any it carried itself)
    status: str  # what it was when cancelled (held, waiting, queued, routed)


@dataclass(frozen=True)
class AcceptedTurn:
    turn_id: str
    status: TurnStatus
    topology: str


def _deadline(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@dataclass(frozen=True)
class KeyedTurn:
    """The turn an idempotency key belongs to, with what it was accepted for."""

    turn_id: str
    conversation: str
    message: str

    def differences(self, *, conversation: str, message: str) -> list[str]:
        """The fields in which a request with the same key differs from this turn."""
        differs = []
        if message != self.message:
            differs.append("message")
        if conversation != self.conversation:
            differs.append("conversation")
        return differs


def find_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> KeyedTurn | None:
    row = session.execute(
        select(Turn.id, Conversation.external_id, Turn.message)
        .join(Conversation, Conversation.id == Turn.conversation_id)
        .where(Turn.tenant_id == tenant_id, Turn.idempotency_key == key)
    ).first()
    if row is None:
        return None
    return KeyedTurn(str(row.id), conversation=row.external_id, message=row.message)


# The turn, its dispatch intent (when its conversation is free) and the conversation's
# counters, in one statement: enqueue_turn runs it for every turn, in the caller's process.
# The conversation upsert's row lock orders concurrent turns of one conversation, and
# ``active_turn_id`` says which of them may run now.
for _accepted in (TurnStatus.HELD, TurnStatus.QUEUED, TurnStatus.WAITING):
    check_transition(Actor.CLIENT, None, _accepted)
_NEW_CONVERSATION = columns(
    Actor.CLIENT,
    Table.CONVERSATIONS,
    ("id", "tenant_id", "external_id", "next_seq", "active_turn_id"),
)
_NEXT_IN_CONVERSATION = assignments(
    Actor.CLIENT,
    Table.CONVERSATIONS,
    {
        "next_seq": "conversations.next_seq + 1",
        "active_turn_id": """CASE WHEN conversations.active_turn_id = %(interrupted_id)s
                                  THEN EXCLUDED.active_turn_id
                                  ELSE COALESCE(conversations.active_turn_id,
                                                EXCLUDED.active_turn_id) END""",
        "updated_at": "now()",
    },
)
_NEW_TURN = columns(
    Actor.CLIENT,
    Table.TURNS,
    (
        "id",
        "tenant_id",
        "conversation_id",
        "seq",
        "idempotency_key",
        "message",
        "carried_message",
        "topology",
        "status",
        "accepted_at",
        "stage_deadline_at",
    ),
)
_ACCEPT_TURN = f"""
    WITH conv AS (
        INSERT INTO conversations ({_NEW_CONVERSATION})
        VALUES (%(conversation_row_id)s, %(tenant_id)s, %(external_id)s, 2, %(id)s)
        ON CONFLICT (tenant_id, external_id) DO UPDATE
        SET {_NEXT_IN_CONVERSATION}
        RETURNING id, next_seq, active_turn_id
    ), turn AS (
        INSERT INTO turns ({_NEW_TURN})
        SELECT %(id)s, %(tenant_id)s, conv.id, conv.next_seq - 1, %(idempotency_key)s,
               %(message)s, %(carried_message)s, %(topology)s,
               CASE WHEN %(held)s THEN {sql_status(TurnStatus.HELD)}
                    WHEN conv.active_turn_id = %(id)s THEN {sql_status(TurnStatus.QUEUED)}
                    ELSE {sql_status(TurnStatus.WAITING)} END,
               %(accepted_at)s,
               CASE WHEN conv.active_turn_id = %(id)s AND NOT %(held)s
                    THEN %(stage_deadline_at)s END
        FROM conv
        WHERE conv.active_turn_id = %(id)s OR NOT %(reject_when_busy)s
        RETURNING id, status
    ), intent AS (
        INSERT INTO turn_outbox (turn_id)
        SELECT id FROM turn WHERE status = {sql_status(TurnStatus.QUEUED)}
    )
    SELECT (SELECT status FROM turn) AS status
"""


def accept_turn(
    conn: psycopg.Connection[Any],
    *,
    turn_id: str,
    tenant_id: str,
    conversation: str,
    message: str,
    topology: str,
    idempotency_key: str | None,
    accepted_at: float,
    stage_deadline_s: float,
    reject_when_busy: bool,
    held: bool = False,
    interrupted: Interruption | None = None,
) -> AcceptedTurn:
    """Insert the turn and, if its conversation is free, its dispatch intent (the outbox row),
    in one round trip. A turn refused because its conversation is busy writes nothing: its
    statement then runs in a transaction that is rolled back. A ``held`` turn gets no
    intent (see ``promote_held``). After ``interrupted`` (cancelled in the caller's
    transaction) the conversation is this turn's, and it carries the cancelled messages.

    Raises psycopg's UniqueViolation when the tenant already has a turn with this
    idempotency key (see ``is_idempotency_conflict``).
    """
    params = {
        "conversation_row_id": time_ordered_uuid(),
        "tenant_id": tenant_id,
        "external_id": conversation,
        "id": uuid.UUID(turn_id),
        "idempotency_key": idempotency_key,
        "message": message,
        "topology": topology,
        "accepted_at": accepted_at,
        "stage_deadline_at": _deadline(stage_deadline_s),
        "reject_when_busy": reject_when_busy,
        "held": held,
        "interrupted_id": uuid.UUID(interrupted.turn_id) if interrupted else None,
        "carried_message": interrupted.carried if interrupted else None,
    }
    if not reject_when_busy:
        row = conn.execute(_ACCEPT_TURN, params).fetchone()
        assert row is not None and row[0] is not None
        return AcceptedTurn(turn_id, TurnStatus(row[0]), topology)
    with conn.transaction():  # a refusal must not keep the conversation's counter bump
        row = conn.execute(_ACCEPT_TURN, params).fetchone()
        if row is None or row[0] is None:
            raise ConversationBusy(conversation)
    return AcceptedTurn(turn_id, TurnStatus(row[0]), topology)


def is_idempotency_conflict(exc: Exception) -> bool:
    return "uq_turns_tenant_idempotency_key" in str(exc)


_LOAD_TURN = select(Turn).where(Turn.id == bindparam("turn_id"))  # built once: it is hot
_LOCK_TURN = _LOAD_TURN.with_for_update()


def load_turn(session: Session, turn_id: str, *, lock: bool = False) -> Turn:
    stmt = _LOCK_TURN if lock else _LOAD_TURN
    turn = session.scalar(stmt, {"turn_id": uuid.UUID(turn_id)})
    if turn is None:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    return turn


_TURN_EXISTS = "SELECT 1 FROM turns WHERE id = %(turn_id)s"


def turn_exists(conn: psycopg.Connection[Any], turn_id: str) -> bool:
    return conn.execute(_TURN_EXISTS, {"turn_id": uuid.UUID(turn_id)}).fetchone() is not None


def _stage_params(
    stage: Stage,
    *,
    turn_id: str,
    values: dict[str, Any],
    span: SpanRecord,
    usage: dict[str, int] | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {f"new_{k}": _param(v) for k, v in values.items()}
    params.update(span_params(span))
    params["turn_id"] = uuid.UUID(turn_id)
    if usage:
        params["stage_usage"] = Jsonb({stage.value: usage})
    return params


def _param(value: Any) -> Any:
    """JSON documents (research hits, memory) go to jsonb columns as such."""
    return Jsonb(value) if isinstance(value, dict | list) else value


def write_stage_output(
    conn: psycopg.Connection[Any],
    *,
    stage: Stage,
    turn_id: str,
    values: dict[str, Any],
    span: SpanRecord,
    usage: dict[str, int] | None = None,
) -> bool:
    """Write a stage's own fields and its span, once, in one statement.

    Returns False when the stage's output was already there (another delivery wrote it
    first; that one stands) or, for the merge and the agent, when the turn has ended.
    Nothing is written then, not even the span.
    """
    statement = _stage_write(stage, tuple(sorted(values)), bool(usage), values.get("status"))
    params = _stage_params(stage, turn_id=turn_id, values=values, span=span, usage=usage)
    return conn.execute(statement, params).fetchone() is not None


@functools.cache
def _stage_ctes(stage: Stage, fields: tuple[str, ...], usage: bool, status: str | None) -> str:
    """The conditional UPDATE of one stage's fields (``written``) and the INSERT of its span
    (``span``), as the CTEs of one statement, built once per shape: the shape (its fields,
    and the status it sets) is checked against the stage's grant (shared/turn_state.py)
    then, before the database sees it; OwnershipViolation or IllegalTransition otherwise.

    A stage that moves the turn's status (the merge, the agent) writes only when the turn
    is in a status the declared transitions move from (never once it has ended)."""
    actor = STAGE_ACTORS[stage]
    values = {field: f"%(new_{field})s" for field in fields}
    if usage:  # one JSONB column with a key per stage; each stage writes only its key
        values["usage"] = "usage || %(stage_usage)s"
    check_write(actor, Table.TURNS, values.keys())
    targets = () if status is None else (_status(status),)
    if GRANTS[actor].transitions and not targets:
        raise IllegalTransition(f"{actor.value!r} writes the turn's status with its output")
    conditions = [f"{STAGE_OUTPUT[stage]} IS NULL"]
    if targets:
        conditions.append(status_guard(actor, *targets))
    return f"""
        written AS (
            UPDATE turns SET {assignments(actor, Table.TURNS, values, to=targets)}
            WHERE id = %(turn_id)s AND {" AND ".join(conditions)}
            RETURNING id
        ), span AS (
            {INSERT_SPAN_FROM.format(source="written")}
            RETURNING turn_id
        )
    """


# The outputs of the stages before the agent are committed without waiting for the WAL
# flush (synchronous_commit off for that one statement's transaction; the WAL writer
# flushes within wal_writer_delay, 200 ms by default). A Postgres crash in that window can
# lose such an output, never a turn: acceptance and the agent's end are synchronous, the
# WAL is flushed in order (the agent's commit makes every earlier output of its turn
# durable), and the sweeper re-drives a turn from its last durable stage. The wait saved
# is on the critical path of every turn (about 0.15 ms per write here).
RELAXED_COMMIT_STAGES = frozenset({Stage.ORCHESTRATOR, Stage.RESEARCHER, Stage.MERGE})
_RELAXED_COMMIT = "relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS off)"


def _status(value: str) -> TurnStatus:
    try:
        return TurnStatus(value)
    except ValueError:
        raise IllegalTransition(f"{value!r} is not a turn status") from None


@functools.cache
def _stage_write(stage: Stage, fields: tuple[str, ...], usage: bool, status: str | None) -> str:
    ctes = _stage_ctes(stage, fields, usage, status)
    if stage in RELAXED_COMMIT_STAGES:
        return f"WITH {ctes}, {_RELAXED_COMMIT} SELECT turn_id FROM span, relaxed"
    return f"WITH {ctes} SELECT turn_id FROM span"


# The agent's end of the turn: two statements in one transaction, sent as one pipeline
# (shared/db/direct.py). The first writes the reply and the span and locks the
# conversation; the second, whose snapshot is taken only once that lock is held, hands the
# conversation to its next waiting turn: a turn being accepted right now (its upsert holds
# the same lock) is then either already visible as waiting or will find the conversation
# free.
_LOCK_ENDED_CONVERSATION = """
    WITH {ctes}
    SELECT id FROM conversations
    WHERE id = %(conversation_id)s AND EXISTS (SELECT 1 FROM span)
    FOR UPDATE
"""
# The conversation's next turn: the first of its turns that may still be queued.
_NEXT_TURN = f"""(SELECT id FROM turns
                   WHERE conversation_id = %(conversation_id)s
                     AND {sql_in(AWAITING_CONVERSATION)}
                   ORDER BY seq LIMIT 1)"""
# The agent's share of the conversation (its memory and qualification) and the hand-over's
# (the turn that may run now), in one UPDATE; then the hand-over queues that turn.
_MEMORY_AND_HANDOVER = ", ".join(
    (
        assignments(
            Actor.AGENT,
            Table.CONVERSATIONS,
            {
                "contextual_memory": "%(memory)s",
                "qualification_status": "%(qualification_status)s",
                "updated_at": "now()",
            },
        ),
        assignments(Actor.HANDOVER, Table.CONVERSATIONS, {"active_turn_id": _NEXT_TURN}),
    )
)
_QUEUE_NEXT = assignments(
    Actor.HANDOVER,
    Table.TURNS,
    {"status": sql_status(TurnStatus.QUEUED), "stage_deadline_at": "%(next_deadline_at)s"},
    to=[TurnStatus.QUEUED],
)
_RELEASE_CONVERSATION = f"""
    WITH released AS (
        UPDATE conversations
        SET {_MEMORY_AND_HANDOVER}
        WHERE id = %(conversation_id)s AND active_turn_id = %(turn_id)s
          AND EXISTS (SELECT 1 FROM turns
                       WHERE id = %(turn_id)s AND status = {sql_status(TurnStatus.COMPLETED)})
        RETURNING active_turn_id
    ), queued AS (
        UPDATE turns SET {_QUEUE_NEXT}
        FROM released WHERE turns.id = released.active_turn_id
          AND {status_guard(Actor.HANDOVER, TurnStatus.QUEUED, column="turns.status")}
        RETURNING turns.id, turns.topology
    ), intent AS (
        INSERT INTO turn_outbox (turn_id) SELECT id FROM queued
    )
    SELECT id, topology FROM queued
"""


@dataclass(frozen=True)
class Completion:
    ended: bool  # this run committed the turn's one reply
    next_turn: tuple[str, str] | None  # the conversation's next turn (id, topology), if any


def complete_turn(
    conn: psycopg.Connection[Any],
    *,
    turn_id: str,
    conversation_id: uuid.UUID,
    values: dict[str, Any],
    span: SpanRecord,
    usage: dict[str, int] | None,
    memory: dict[str, Any],
    qualification_status: Qualification,
    stage_deadline_s: float,
) -> Completion:
    """The agent's reply and span, the conversation's memory (as stored,
    ``ConversationMemory.to_stored()``) and qualification, and the hand-over to the
    conversation's next turn (its outbox row included): one transaction.

    ``ended`` is False when the turn had already ended (another run, the sweeper): then
    nothing is written.
    """
    ctes = _stage_ctes(Stage.AGENT, tuple(sorted(values)), bool(usage), values.get("status"))
    params = _stage_params(Stage.AGENT, turn_id=turn_id, values=values, span=span, usage=usage)
    params.update(
        conversation_id=conversation_id,
        memory=Jsonb(memory),
        qualification_status=qualification_status.value,
        next_deadline_at=_deadline(stage_deadline_s),
    )
    ending, release = conn.cursor(), conn.cursor()
    with transaction_pipeline(conn):
        ending.execute(_LOCK_ENDED_CONVERSATION.format(ctes=ctes), params)
        release.execute(_RELEASE_CONVERSATION, params)
    released = release.fetchone()
    return Completion(
        ended=ending.fetchone() is not None,
        next_turn=(str(released[0]), str(released[1])) if released else None,
    )


def release_conversation(
    session: Session,
    *,
    turn_id: str,
    conversation_id: uuid.UUID,
    stage_deadline_s: float,
) -> str | None:
    """The turn has ended: hand its conversation to the next waiting turn, if any.

    The conversation row is locked first, so a turn being accepted right now (its upsert
    holds the same lock) is either already visible as waiting or will see the conversation
    free. Returns the id of the turn that may run now; its outbox row is written in this
    same transaction, so it is dispatched even if this process dies right after the commit.
    """
    session.execute(
        select(Conversation.id).where(Conversation.id == conversation_id).with_for_update()
    )
    next_waiting = (
        select(Turn.id)
        .where(
            Turn.conversation_id == conversation_id,
            Turn.status.in_(_AWAITING_CONVERSATION),
        )
        .order_by(Turn.seq)
        .limit(1)
        .scalar_subquery()
    )
    values: dict[str, Any] = {"active_turn_id": next_waiting, "updated_at": func.now()}
    check_write(Actor.HANDOVER, Table.CONVERSATIONS, values.keys())
    released = session.execute(
        update(Conversation)
        .where(
            Conversation.id == conversation_id,
            Conversation.active_turn_id == uuid.UUID(turn_id),
        )
        .values(values)
        .returning(Conversation.active_turn_id)
    ).first()
    if released is None or released.active_turn_id is None:
        return None
    next_id = released.active_turn_id
    queue = {"status": TurnStatus.QUEUED.value, "stage_deadline_at": _deadline(stage_deadline_s)}
    check_write(Actor.HANDOVER, Table.TURNS, queue.keys())
    queued = session.execute(
        update(Turn)
        .where(Turn.id == next_id, Turn.status.in_(_HANDOVER_QUEUES))
        .values(queue)
        .returning(Turn.id)
    ).first()
    if queued is None:  # a held turn: it is queued when its tenant has room (promote_held)
        return None
    session.add(TurnOutbox(turn_id=next_id))
    return str(next_id)


_AWAITING_CONVERSATION = sorted(AWAITING_CONVERSATION)
_HANDOVER_QUEUES = sorted(sources(Actor.HANDOVER, TurnStatus.QUEUED))


def fail_turn(
    session: Session, *, actor: Actor, turn_id: str, reason: str, fallback_reply: str | None
) -> Turn | None:
    """End a turn failed, with a reason (and a fallback reply for the user), exactly once:
    only from a status ``actor`` may fail a turn in (shared/turn_state.py). None when the
    turn is in none of them (it has ended, or moved on)."""
    values = {
        "status": TurnStatus.FAILED.value,
        "failure_reason": reason[:2000],
        "agent_response": func.coalesce(Turn.agent_response, fallback_reply),
        "agent_fallback": True,
        "completed_at": text("extract(epoch from clock_timestamp())"),
    }
    check_write(actor, Table.TURNS, values.keys())
    row = session.execute(
        update(Turn)
        .where(
            Turn.id == uuid.UUID(turn_id),
            Turn.status.in_(sorted(sources(actor, TurnStatus.FAILED))),
        )
        .values(values)
        .returning(Turn.id)
    ).first()
    if row is None:
        return None
    return load_turn(session, turn_id)


# Cancel the conversation's active turn for a later message (in_flight_policy interrupt).
# It runs first in the accepting transaction and locks the turn's row before the acceptance
# locks the conversation's: the order in which an ending turn locks them (its own row, then
# the conversation), so the two never deadlock. A turn that ends at the same moment (its
# agent committing its reply) and this UPDATE take the row one after the other: exactly one
# of them ends it.
_CANCEL = assignments(
    Actor.INTERRUPT,
    Table.TURNS,
    {
        "status": sql_status(TurnStatus.CANCELLED),
        "failure_reason": "%(reason)s",
        "completed_at": "extract(epoch from clock_timestamp())",
    },
    to=[TurnStatus.CANCELLED],
)
_INTERRUPT = f"""
    UPDATE turns t
    SET {_CANCEL}
    FROM conversations c
    WHERE c.tenant_id = %(tenant_id)s AND c.external_id = %(external_id)s
      AND t.id = c.active_turn_id
      AND {status_guard(Actor.INTERRUPT, TurnStatus.CANCELLED, column="t.status")}
    RETURNING t.id, t.tenant_id, t.status AS was,
              concat_ws(E'\\n\\n', t.carried_message, t.message) AS carried
"""
_ACTIVE_TURN = """
    SELECT active_turn_id FROM conversations
    WHERE tenant_id = %(tenant_id)s AND external_id = %(external_id)s
"""


def interrupt_active_turn(
    conn: psycopg.Connection[Any], *, tenant_id: str, conversation: str, reason: str
) -> Interruption | None:
    """Cancel the conversation's turn in flight, in the caller's transaction; None when it
    has none (or it ended first)."""
    params = {"tenant_id": tenant_id, "external_id": conversation, "reason": reason}
    for _ in range(3):  # the active turn ended meanwhile and handed over to the next one
        row = conn.execute(_INTERRUPT, params).fetchone()
        if row is not None:
            return Interruption(str(row[0]), row[1], carried=row[3], status=row[2])
        if conn.execute(_ACTIVE_TURN, params).fetchone() in (None, (None,)):
            return None
    return None


def stage_message(turn: TurnRecord) -> str:
    """What the stages answer: the turn's message, after the messages it carries."""
    if turn.carried_message:
        return f"{turn.carried_message}\n\n{turn.message}"
    return turn.message


# Held turns the admission let go: queued (with their dispatch intent) when their
# conversation is theirs, else waiting behind its active turn. Their conversations are
# locked first, so that a turn ending at the same moment either hands its conversation on
# before (this sees it) or after (it sees these as waiting).
_LOCK_HELD_CONVERSATIONS = """
    SELECT id FROM conversations
    WHERE id IN (SELECT conversation_id FROM turns WHERE id = ANY(%(ids)s))
    ORDER BY id
    FOR UPDATE
"""
_PROMOTE = assignments(
    Actor.ADMISSION,
    Table.TURNS,
    {
        "status": f"""CASE WHEN c.active_turn_id = t.id THEN {sql_status(TurnStatus.QUEUED)}
                           ELSE {sql_status(TurnStatus.WAITING)} END""",
        "stage_deadline_at": "CASE WHEN c.active_turn_id = t.id THEN %(deadline_at)s END",
        "released_at": "extract(epoch from clock_timestamp())",
    },
    to=[TurnStatus.QUEUED, TurnStatus.WAITING],
)
_PROMOTABLE = status_guard(
    Actor.ADMISSION, TurnStatus.QUEUED, TurnStatus.WAITING, column="t.status"
)
_PROMOTE_HELD = f"""
    WITH promoted AS (
        UPDATE turns t
        SET {_PROMOTE}
        FROM conversations c
        WHERE t.id = ANY(%(ids)s) AND c.id = t.conversation_id AND {_PROMOTABLE}
        RETURNING t.id, t.status, t.topology, t.accepted_at
    ), intent AS (
        INSERT INTO turn_outbox (turn_id)
        SELECT id FROM promoted WHERE status = {sql_status(TurnStatus.QUEUED)}
        ON CONFLICT DO NOTHING
    )
    SELECT id, topology FROM promoted
     WHERE status = {sql_status(TurnStatus.QUEUED)} ORDER BY accepted_at
"""


def promote_held(
    conn: psycopg.Connection[Any], turn_ids: list[str], *, stage_deadline_s: float
) -> list[tuple[str, str]]:
    """Let held turns go; returns those that may run now (id, topology), oldest first. A
    turn no longer held (promoted already, or ended) is left alone."""
    if not turn_ids:
        return []
    params = {"ids": [uuid.UUID(t) for t in turn_ids], "deadline_at": _deadline(stage_deadline_s)}
    with conn.transaction():
        conn.execute(_LOCK_HELD_CONVERSATIONS, params)
        rows = conn.execute(_PROMOTE_HELD, params).fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]


_HELD_TURNS = f"""
    SELECT tenant_id, id, accepted_at FROM turns WHERE status = {sql_status(TurnStatus.HELD)}
    ORDER BY tenant_id, accepted_at
"""


def held_turns(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, float]]]:
    """Every tenant's held turns (id, accepted_at), oldest first."""
    held: dict[str, list[tuple[str, float]]] = {}
    for tenant_id, turn_id, accepted_at in conn.execute(_HELD_TURNS).fetchall():
        held.setdefault(tenant_id, []).append((str(turn_id), float(accepted_at)))
    return held
