"""The turn row: acceptance, and each stage's write of the fields it owns.

State ownership (DESIGN): each stage owns the fields it writes, and no two stages that can
run at once share one. A stage that tries to write outside its fields fails loudly with
``OwnershipViolation``, before the database sees the statement. Every stage write is a
conditional UPDATE (``WHERE <owned output> IS NULL``), so a re-delivered task changes
nothing twice.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import Conversation, Turn, TurnOutbox
from shared.errors import InvalidInput, OwnershipViolation, TurnNotFound
from shared.schemas import Stage, TurnStatus

TURNS = cast(Table, Turn.__table__)
TERMINAL = (TurnStatus.COMPLETED.value, TurnStatus.FAILED.value)

OWNED_FIELDS: dict[Stage, frozenset[str]] = {
    Stage.ORCHESTRATOR: frozenset(
        {
            "phase",
            "intent",
            "proposed_agent",
            "confidence",
            "handoff",
            "orchestration_note",
            "orchestrated_at",
        }
    ),
    Stage.RESEARCHER: frozenset(
        {"research_results", "kb_information_level", "research_note", "researched_at"}
    ),
    Stage.MERGE: frozenset(
        {"next_agent", "routing_reason", "routed_at", "status", "stage_deadline_at"}
    ),
    Stage.AGENT: frozenset(
        {"agent_response", "agent_fallback", "agent_note", "completed_at", "status"}
    ),
}
# The column whose presence means "this stage's output is durable".
STAGE_OUTPUT: dict[Stage, str] = {
    Stage.ORCHESTRATOR: "orchestrated_at",
    Stage.RESEARCHER: "researched_at",
    Stage.MERGE: "routed_at",
    Stage.AGENT: "completed_at",
}


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
    def topology(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def accepted_at(self) -> float: ...
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
class AcceptedTurn:
    turn_id: str
    status: TurnStatus
    topology: str
    existing: bool  # True when an idempotency key returned an earlier turn


def _deadline(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def find_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> AcceptedTurn | None:
    row = session.execute(
        select(Turn.id, Turn.status, Turn.topology).where(
            Turn.tenant_id == tenant_id, Turn.idempotency_key == key
        )
    ).first()
    if row is None:
        return None
    return AcceptedTurn(str(row.id), TurnStatus(row.status), row.topology, existing=True)


# enqueue_turn runs these for every turn, in the caller's process: plain SQL, prepared once.
_UPSERT_CONVERSATION = text("""
    INSERT INTO conversations (id, tenant_id, external_id, next_seq, active_turn_id)
    VALUES (:id, :tenant_id, :external_id, 2, :turn_id)
    ON CONFLICT (tenant_id, external_id) DO UPDATE
    SET next_seq = conversations.next_seq + 1,
        active_turn_id = COALESCE(conversations.active_turn_id, EXCLUDED.active_turn_id),
        updated_at = now()
    RETURNING id, next_seq, active_turn_id
""")
_TURN_VALUES = """
    INSERT INTO turns (id, tenant_id, conversation_id, seq, idempotency_key, message, topology,
                       status, accepted_at, stage_deadline_at)
    VALUES (:id, :tenant_id, :conversation_id, :seq, :idempotency_key, :message, :topology,
            :status, :accepted_at, :stage_deadline_at)
"""
_INSERT_WAITING_TURN = text(_TURN_VALUES)
# The turn and its dispatch intent in one statement.
_INSERT_TURN_AND_INTENT = text(f"""
    WITH inserted AS ({_TURN_VALUES} RETURNING id)
    INSERT INTO turn_outbox (turn_id) SELECT id FROM inserted
""")


def accept_turn(
    session: Session,
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
) -> AcceptedTurn:
    """Insert the turn and, if its conversation is free, its dispatch intent (the outbox row).

    The conversation row is upserted first; the upsert's row lock orders concurrent turns of
    one conversation, and ``active_turn_id`` says which of them may run now.
    """
    conv = session.execute(
        _UPSERT_CONVERSATION,
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "external_id": conversation,
            "turn_id": uuid.UUID(turn_id),
        },
    ).one()
    runs_now = conv.active_turn_id == uuid.UUID(turn_id)
    if not runs_now and reject_when_busy:
        raise InvalidInput("conversation", f"{conversation!r} already has a turn in flight")
    status = TurnStatus.QUEUED if runs_now else TurnStatus.WAITING
    session.execute(
        _INSERT_TURN_AND_INTENT if runs_now else _INSERT_WAITING_TURN,
        {
            "id": uuid.UUID(turn_id),
            "tenant_id": tenant_id,
            "conversation_id": conv.id,
            "seq": conv.next_seq - 1,
            "idempotency_key": idempotency_key,
            "message": message,
            "topology": topology,
            "status": status.value,
            "accepted_at": accepted_at,
            "stage_deadline_at": _deadline(stage_deadline_s) if runs_now else None,
        },
    )
    return AcceptedTurn(turn_id, status, topology, existing=False)


def is_idempotency_conflict(exc: IntegrityError) -> bool:
    return "uq_turns_tenant_idempotency_key" in str(exc.orig)


_LOAD_TURN = select(Turn).where(Turn.id == bindparam("turn_id"))  # built once: it is hot
_LOCK_TURN = _LOAD_TURN.with_for_update()


def load_turn(session: Session, turn_id: str, *, lock: bool = False) -> Turn:
    stmt = _LOCK_TURN if lock else _LOAD_TURN
    turn = session.scalar(stmt, {"turn_id": uuid.UUID(turn_id)})
    if turn is None:
        raise TurnNotFound(f"turn {turn_id} does not exist")
    return turn


def write_stage_fields(
    session: Session,
    *,
    stage: Stage,
    turn_id: str,
    values: dict[str, Any],
    only_if_unset: bool = True,
    usage: dict[str, int] | None = None,
) -> bool:
    """Write a stage's own fields, once. Returns False when the output was already there."""
    foreign = set(values) - OWNED_FIELDS[stage]
    if foreign:
        raise OwnershipViolation(
            f"stage {stage.value!r} tried to write {sorted(foreign)}, which it does not own; "
            f"it owns {sorted(OWNED_FIELDS[stage])}"
        )
    params: dict[str, Any] = {f"new_{k}": v for k, v in values.items()}
    params["turn_id"] = uuid.UUID(turn_id)
    if usage:
        params["stage_usage"] = {stage.value: usage}
    stmt = _stage_write(stage, tuple(sorted(values)), only_if_unset, bool(usage))
    return session.connection().execute(stmt, params).first() is not None


@functools.cache
def _stage_write(stage: Stage, columns: tuple[str, ...], only_if_unset: bool, usage: bool) -> Any:
    """The conditional UPDATE of one stage's fields, built once per shape: it runs once per
    stage of every turn, and building a statement costs more CPU than running it."""
    turns = TURNS.c
    stmt = update(TURNS).where(turns.id == bindparam("turn_id"))
    if only_if_unset:
        stmt = stmt.where(turns[STAGE_OUTPUT[stage]].is_(None))
    if stage in (Stage.MERGE, Stage.AGENT):
        stmt = stmt.where(turns.status.notin_(TERMINAL))
    assignments: dict[Any, Any] = {
        column: bindparam(f"new_{column}", type_=turns[column].type) for column in columns
    }
    if usage:
        # usage is one JSONB column with a key per stage; each stage writes only its key.
        assignments["usage"] = turns.usage.op("||")(bindparam("stage_usage", type_=JSONB))
    return stmt.values(assignments).returning(turns.id)


def release_conversation(
    session: Session,
    *,
    turn_id: str,
    conversation_id: uuid.UUID,
    stage_deadline_s: float,
    memory: dict[str, Any] | None = None,
    qualification_status: str | None = None,
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
        .where(Turn.conversation_id == conversation_id, Turn.status == TurnStatus.WAITING.value)
        .order_by(Turn.seq)
        .limit(1)
        .scalar_subquery()
    )
    values: dict[str, Any] = {"active_turn_id": next_waiting, "updated_at": func.now()}
    if memory is not None:
        values["contextual_memory"] = memory
    if qualification_status is not None:
        values["qualification_status"] = qualification_status
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
    session.execute(
        update(Turn)
        .where(Turn.id == next_id)
        .values(status=TurnStatus.QUEUED.value, stage_deadline_at=_deadline(stage_deadline_s))
    )
    session.add(TurnOutbox(turn_id=next_id))
    return str(next_id)


def fail_turn(
    session: Session, *, turn_id: str, reason: str, fallback_reply: str | None
) -> Turn | None:
    """End a turn failed, with a reason (and a fallback reply for the user), exactly once."""
    row = session.execute(
        update(Turn)
        .where(
            Turn.id == uuid.UUID(turn_id),
            Turn.status.notin_([TurnStatus.COMPLETED.value, TurnStatus.FAILED.value]),
        )
        .values(
            status=TurnStatus.FAILED.value,
            failure_reason=reason[:2000],
            agent_response=func.coalesce(Turn.agent_response, fallback_reply),
            agent_fallback=True,
            completed_at=text("extract(epoch from clock_timestamp())"),
        )
        .returning(Turn.id)
    ).first()
    if row is None:
        return None
    return load_turn(session, turn_id)
