"""The turn's state machine: who may write which fields of a turn and of its conversation,
and which status changes each of them may make.

Every write to ``turns`` and ``conversations`` goes through these rules (shared/db/turns.py):
the stages' writes are checked when they are made, before the database sees the statement;
the fixed statements (acceptance, the interrupt, the hand-over, the promotion of held
turns, the end of a failed turn) are built from them when their module is imported, and
their ``WHERE status IN (...)`` guards are rendered from the transitions below, so the SQL
and the rules cannot drift apart. The checks are set look-ups on frozensets computed here
once: no I/O, no round trip.

The statuses (shared/schemas.py ``TurnStatus``) and who moves a turn between them::

    from                            to                      actor
    (new)                           held, waiting, queued   client (enqueue_turn)
    held                            queued, waiting         admission (its tenant has room)
    waiting                         queued                  handover (the turn before it ended)
    queued                          routed                  merge
    routed                          completed               agent
    held                            failed                  admission (held too long)
    queued, routed                  failed                  sweeper, task guard
    held, waiting, queued, routed   cancelled               interrupt (a later message)

``completed``, ``failed`` and ``cancelled`` are terminal: no actor moves a turn out of them,
so a turn ends exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from shared.errors import IllegalTransition, OwnershipViolation
from shared.schemas import TERMINAL_STATUSES, Stage, TurnStatus


class Actor(StrEnum):
    """Everything that writes a turn or its conversation."""

    CLIENT = "client"  # enqueue_turn: inserts the turn, upserts its conversation
    INTERRUPT = "interrupt"  # enqueue_turn under in_flight_policy=interrupt: cancels the turn
    ORCHESTRATOR = "orchestrator"
    RESEARCHER = "researcher"
    MERGE = "merge"
    AGENT = "agent"  # ends the turn with its reply; the conversation's memory, qualification
    HANDOVER = "handover"  # a turn ended: its conversation goes to the next turn
    ADMISSION = "admission"  # held turns let go (promote_held), or failed when held too long
    SWEEPER = "sweeper"  # recovery: re-drives stuck turns, fails those out of attempts
    TASK_GUARD = "task_guard"  # a stage's task that kills its worker, or may not wait


class Table(StrEnum):
    TURNS = "turns"
    CONVERSATIONS = "conversations"


STAGE_ACTORS: Mapping[Stage, Actor] = MappingProxyType({stage: Actor(stage) for stage in Stage})
# The column whose presence means "this stage's output is durable" (each stage's write is
# conditional on it being NULL; the sweeper re-drives from the last stage that has it).
STAGE_OUTPUT: Mapping[Stage, str] = MappingProxyType(
    {
        Stage.ORCHESTRATOR: "orchestrated_at",
        Stage.RESEARCHER: "researched_at",
        Stage.MERGE: "routed_at",
        Stage.AGENT: "completed_at",
    }
)

# Statuses of a turn whose workflow was dispatched: each has a stage deadline, by which the
# sweeper re-drives or fails the turn.
DISPATCHED = frozenset({TurnStatus.QUEUED, TurnStatus.ROUTED})
OPEN = frozenset(TurnStatus) - TERMINAL_STATUSES

Transition = tuple[TurnStatus | None, TurnStatus]  # from (None: the row is new), to


def _moves(sources: Iterable[TurnStatus | None], to: TurnStatus) -> frozenset[Transition]:
    return frozenset((source, to) for source in sources)


# What ends a turn failed (shared/db/turns.py ``fail_turn``): its status, the reason, the
# fallback reply (unless a reply is there), and when.
_ENDING_FAILED = frozenset(
    {"status", "failure_reason", "agent_response", "agent_fallback", "completed_at"}
)


@dataclass(frozen=True)
class Grant:
    """What one actor may write: fields of each table, and status transitions."""

    turns: frozenset[str] = frozenset()
    conversations: frozenset[str] = frozenset()
    transitions: frozenset[Transition] = frozenset()

    def fields(self, table: Table) -> frozenset[str]:
        return self.turns if table is Table.TURNS else self.conversations


GRANTS: Mapping[Actor, Grant] = MappingProxyType(
    {
        Actor.CLIENT: Grant(
            turns=frozenset(
                {
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
                }
            ),
            conversations=frozenset(
                {"id", "tenant_id", "external_id", "next_seq", "active_turn_id", "updated_at"}
            ),
            transitions=_moves([None], TurnStatus.HELD)
            | _moves([None], TurnStatus.WAITING)
            | _moves([None], TurnStatus.QUEUED),
        ),
        Actor.INTERRUPT: Grant(
            turns=frozenset({"status", "failure_reason", "completed_at"}),
            transitions=_moves(OPEN, TurnStatus.CANCELLED),
        ),
        # The stages: no two that can run at once share a field. Each writes its own key of
        # the ``usage`` document only.
        Actor.ORCHESTRATOR: Grant(
            turns=frozenset(
                {
                    "phase",
                    "intent",
                    "proposed_agent",
                    "confidence",
                    "handoff",
                    "orchestration_note",
                    "orchestrated_at",
                    "usage",
                }
            )
        ),
        Actor.RESEARCHER: Grant(
            turns=frozenset(
                {"research_results", "kb_information_level", "research_note", "researched_at"}
                | {"usage"}
            )
        ),
        Actor.MERGE: Grant(
            turns=frozenset(
                {"next_agent", "routing_reason", "routed_at", "status", "stage_deadline_at"}
            ),
            transitions=_moves([TurnStatus.QUEUED], TurnStatus.ROUTED),
        ),
        Actor.AGENT: Grant(
            turns=frozenset(
                {"agent_response", "agent_fallback", "agent_note", "completed_at", "status"}
                | {"memory_after", "usage"}
            ),
            conversations=frozenset({"contextual_memory", "qualification_status", "updated_at"}),
            transitions=_moves([TurnStatus.ROUTED], TurnStatus.COMPLETED),
        ),
        Actor.HANDOVER: Grant(
            turns=frozenset({"status", "stage_deadline_at"}),
            conversations=frozenset({"active_turn_id", "updated_at"}),
            transitions=_moves([TurnStatus.WAITING], TurnStatus.QUEUED),
        ),
        Actor.ADMISSION: Grant(
            turns=frozenset({"stage_deadline_at", "released_at"}) | _ENDING_FAILED,
            transitions=_moves([TurnStatus.HELD], TurnStatus.QUEUED)
            | _moves([TurnStatus.HELD], TurnStatus.WAITING)
            | _moves([TurnStatus.HELD], TurnStatus.FAILED),
        ),
        Actor.SWEEPER: Grant(
            turns=frozenset({"attempts", "stage_deadline_at"}) | _ENDING_FAILED,
            transitions=_moves(DISPATCHED, TurnStatus.FAILED),
        ),
        Actor.TASK_GUARD: Grant(
            turns=_ENDING_FAILED,
            transitions=_moves(DISPATCHED, TurnStatus.FAILED),
        ),
    }
)

# Computed once: (actor, to) -> the statuses the actor may move a turn from to ``to``.
_SOURCES: Mapping[tuple[Actor, TurnStatus], frozenset[TurnStatus | None]] = MappingProxyType(
    {
        (actor, to): frozenset(s for s, t in grant.transitions if t is to)
        for actor, grant in GRANTS.items()
        for to in {t for _, t in grant.transitions}
    }
)
# A turn that may still be queued takes its conversation when the turn before it ends (the
# hand-over picks it; a held one is queued when its tenant has room).
AWAITING_CONVERSATION = frozenset(
    source
    for grant in GRANTS.values()
    for source, to in grant.transitions
    if to is TurnStatus.QUEUED and source is not None
)


def _consistent() -> None:
    """The declarations agree with themselves: an actor writes ``status`` exactly when it
    has transitions, nothing leaves a terminal status, and each stage owns the column that
    marks its output. Checked at import."""
    for stage, column in STAGE_OUTPUT.items():
        if column not in GRANTS[STAGE_ACTORS[stage]].turns:
            raise AssertionError(f"{stage.value} does not own its output column {column}")
    for actor, grant in GRANTS.items():
        if ("status" in grant.turns) != bool(grant.transitions):
            raise AssertionError(f"{actor.value}: writes status iff it has transitions")
        for source, to in grant.transitions:
            if source in TERMINAL_STATUSES:
                raise AssertionError(f"{actor.value}: {source} -> {to} leaves a terminal status")


_consistent()


def check_write(actor: Actor, table: Table, fields: Iterable[str]) -> None:
    """``actor`` may write ``fields`` of ``table``; OwnershipViolation otherwise, naming the
    actor, the fields it does not own and those it does."""
    owned = GRANTS[actor].fields(table)
    if not isinstance(fields, AbstractSet):
        fields = frozenset(fields)
    if fields <= owned:
        return
    foreign = sorted(fields - owned)
    raise OwnershipViolation(
        f"{actor.value!r} tried to write {table.value} {foreign}, which it does not own; "
        f"it owns {sorted(owned) or 'nothing'} of {table.value}"
    )


def _transition_names(grant: Grant) -> str:
    moves = sorted(f"{_name(s)} -> {t.value}" for s, t in grant.transitions)
    return ", ".join(moves) or "none"


def _name(status: TurnStatus | None) -> str:
    return "(new)" if status is None else status.value


def check_transition(actor: Actor, source: TurnStatus | None, to: TurnStatus) -> None:
    """``actor`` may move a turn from ``source`` (None: inserting it) to ``to``;
    IllegalTransition otherwise, naming the actor, the transition and the legal ones."""
    if source in _SOURCES.get((actor, to), ()):
        return
    raise IllegalTransition(
        f"{actor.value!r} may not move a turn {_name(source)} -> {to.value}; "
        f"its transitions: {_transition_names(GRANTS[actor])}"
    )


def sources(actor: Actor, *targets: TurnStatus) -> frozenset[TurnStatus]:
    """The existing statuses from which ``actor`` may move a turn to every one of
    ``targets``; IllegalTransition when there is none (the actor may not reach a target)."""
    found: frozenset[TurnStatus | None] | None = None
    for to in targets:
        reach = _SOURCES.get((actor, to))
        if reach is None:
            raise IllegalTransition(
                f"{actor.value!r} may not move a turn to {to.value}; "
                f"its transitions: {_transition_names(GRANTS[actor])}"
            )
        found = reach if found is None else found & reach
    existing = frozenset(s for s in found or () if s is not None)
    if not existing:
        wanted = " and ".join(t.value for t in targets)
        raise IllegalTransition(f"{actor.value!r} has no status it may move to {wanted}")
    return existing


# SQL rendered from the rules. Only statuses (enum values, never input) are interpolated.


def sql_status(status: TurnStatus) -> str:
    """The status as an SQL literal: ``'queued'``."""
    return f"'{status.value}'"


def sql_in(statuses: Iterable[TurnStatus], column: str = "status") -> str:
    """``status IN ('queued', 'routed')`` in a fixed order (``status = 'queued'`` for one)."""
    listed = sorted(statuses)
    if len(listed) == 1:
        return f"{column} = {sql_status(listed[0])}"
    return f"{column} IN ({', '.join(sql_status(s) for s in listed)})"


def status_guard(actor: Actor, *targets: TurnStatus, column: str = "status") -> str:
    """The WHERE clause under which ``actor`` may move a turn to ``targets``:
    ``status IN (...)`` of the statuses the declared transitions allow."""
    return sql_in(sources(actor, *targets), column)


def assignments(
    actor: Actor, table: Table, values: Mapping[str, str], *, to: Iterable[TurnStatus] = ()
) -> str:
    """``column = expression, ...`` of an UPDATE's SET, checked: the actor owns each column,
    and when it sets ``status``, each status it may set (``to``) is one it may reach."""
    check_write(actor, table, values.keys())
    targets = tuple(to)
    if ("status" in values) != bool(targets):
        raise IllegalTransition(f"{actor.value!r}: a status write names its target statuses")
    if targets:
        sources(actor, *targets)
    return ", ".join(f"{column} = {expression}" for column, expression in values.items())


def columns(actor: Actor, table: Table, names: Iterable[str]) -> str:
    """``a, b, c`` of an INSERT's column list, checked: the actor owns each column."""
    listed = tuple(names)
    check_write(actor, table, listed)
    return ", ".join(listed)
