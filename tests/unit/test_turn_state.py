"""The turn's state machine (shared/turn_state.py), without a database: who may write which
fields, which status transitions each writer may make, and that the SQL guards of the
statements that write turns are the ones the transitions declare."""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from shared.db import turns as turn_sql
from shared.db.models import Base, Conversation, Turn
from shared.errors import IllegalTransition, OwnershipViolation, PermanentError
from shared.schemas import (
    TERMINAL_STATUSES,
    Agent,
    KbLevel,
    Phase,
    Qualification,
    Stage,
    Topology,
    TurnStatus,
)
from shared.turn import recovery
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
    status_guard,
)

ROOT = Path(__file__).resolve().parents[2]
S = TurnStatus

# The specification, written out: every legal (from, to) per actor. (None: a new turn.)
LEGAL: dict[Actor, set[tuple[TurnStatus | None, TurnStatus]]] = {
    Actor.CLIENT: {(None, S.HELD), (None, S.WAITING), (None, S.QUEUED)},
    Actor.INTERRUPT: {(s, S.CANCELLED) for s in (S.HELD, S.WAITING, S.QUEUED, S.ROUTED)},
    Actor.ORCHESTRATOR: set(),
    Actor.RESEARCHER: set(),
    Actor.MERGE: {(S.QUEUED, S.ROUTED)},
    Actor.AGENT: {(S.ROUTED, S.COMPLETED)},
    Actor.HANDOVER: {(S.WAITING, S.QUEUED)},
    Actor.ADMISSION: {(S.HELD, S.QUEUED), (S.HELD, S.WAITING), (S.HELD, S.FAILED)},
    Actor.SWEEPER: {(S.QUEUED, S.FAILED), (S.ROUTED, S.FAILED)},
    Actor.TASK_GUARD: {(S.QUEUED, S.FAILED), (S.ROUTED, S.FAILED)},
}
EVERY_MOVE = list(itertools.product(Actor, [None, *TurnStatus], TurnStatus))


def test_the_specification_covers_every_actor() -> None:
    assert set(LEGAL) == set(Actor) == set(GRANTS)


@pytest.mark.parametrize(("actor", "source", "to"), EVERY_MOVE)
def test_a_transition_is_legal_exactly_when_the_actor_is_granted_it(
    actor: Actor, source: TurnStatus | None, to: TurnStatus
) -> None:
    if (source, to) in LEGAL[actor]:
        check_transition(actor, source, to)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(actor, source, to)


def test_an_illegal_transition_names_the_actor_the_transition_and_the_legal_ones() -> None:
    with pytest.raises(IllegalTransition) as refused:
        check_transition(Actor.MERGE, S.WAITING, S.ROUTED)
    assert isinstance(refused.value, PermanentError)
    assert str(refused.value) == (
        "'merge' may not move a turn waiting -> routed; its transitions: queued -> routed"
    )
    with pytest.raises(IllegalTransition, match=r"'agent' may not move a turn \(new\) -> queued"):
        check_transition(Actor.AGENT, None, S.QUEUED)


def test_nothing_leaves_an_end_and_only_the_client_makes_a_turn() -> None:
    for actor, grant in GRANTS.items():
        for source, to in grant.transitions:
            assert source not in TERMINAL_STATUSES, (actor, source, to)
            assert (source is None) == (actor is Actor.CLIENT), (actor, source, to)


def test_each_end_is_reached_only_by_its_own_writers() -> None:
    reaching = {
        to: {actor for actor, grant in GRANTS.items() for _, t in grant.transitions if t is to}
        for to in TERMINAL_STATUSES
    }
    assert reaching == {
        S.COMPLETED: {Actor.AGENT},
        S.CANCELLED: {Actor.INTERRUPT},
        S.FAILED: {Actor.ADMISSION, Actor.SWEEPER, Actor.TASK_GUARD},
    }


def test_every_open_status_can_reach_an_end() -> None:
    """No turn can be stranded: from every open status some path of transitions ends it."""
    edges = {(s, t) for grant in GRANTS.values() for s, t in grant.transitions}
    ending = set(TERMINAL_STATUSES)
    while True:
        more = {s for s, t in edges if t in ending and s is not None} - ending
        if not more:
            break
        ending |= more
    assert ending == set(TurnStatus)


def test_sources_are_the_statuses_an_actor_moves_from() -> None:
    assert sources(Actor.INTERRUPT, S.CANCELLED) == {S.HELD, S.WAITING, S.QUEUED, S.ROUTED}
    assert sources(Actor.ADMISSION, S.QUEUED, S.WAITING) == {S.HELD}
    assert sources(Actor.SWEEPER, S.FAILED) == {S.QUEUED, S.ROUTED}
    assert {S.HELD, S.WAITING} == AWAITING_CONVERSATION
    with pytest.raises(IllegalTransition, match="'sweeper' may not move a turn to queued"):
        sources(Actor.SWEEPER, S.QUEUED)
    with pytest.raises(IllegalTransition, match="'client' has no status it may move to held"):
        sources(Actor.CLIENT, S.HELD)  # the client only inserts


# Fields


@pytest.mark.parametrize("actor", list(Actor))
def test_an_actor_may_write_its_own_fields_and_no_other(actor: Actor) -> None:
    for table in Table:
        owned = GRANTS[actor].fields(table)
        check_write(actor, table, owned)
        check_write(actor, table, {}.keys())
        everything = {c.key for c in _model(table).__table__.columns}
        for foreign in sorted(everything - owned):
            with pytest.raises(OwnershipViolation, match=f"'{actor.value}' tried to write"):
                check_write(actor, table, [*owned, foreign])


def test_an_ownership_violation_names_the_actor_the_fields_and_what_it_owns() -> None:
    with pytest.raises(OwnershipViolation) as refused:
        check_write(Actor.ORCHESTRATOR, Table.TURNS, ["intent", "kb_information_level"])
    assert isinstance(refused.value, PermanentError)
    message = str(refused.value)
    assert message.startswith(
        "'orchestrator' tried to write turns ['kb_information_level'], which it does not own"
    )
    assert "'intent'" in message and "'phase'" in message
    with pytest.raises(OwnershipViolation, match="it owns nothing of conversations"):
        check_write(Actor.MERGE, Table.CONVERSATIONS, ["contextual_memory"])


def _model(table: Table) -> Any:
    return Turn if table is Table.TURNS else Conversation


@pytest.mark.parametrize("table", list(Table))
def test_every_declared_field_is_a_column(table: Table) -> None:
    columns_of = {c.key for c in _model(table).__table__.columns}
    for actor, grant in GRANTS.items():
        assert grant.fields(table) <= columns_of, actor


def test_stages_that_run_at_once_share_no_field() -> None:
    orchestrator = GRANTS[Actor.ORCHESTRATOR].turns - {"usage"}  # each writes its own key
    researcher = GRANTS[Actor.RESEARCHER].turns - {"usage"}
    assert not orchestrator & researcher


def test_only_the_agent_writes_the_conversations_memory_and_qualification() -> None:
    for field in ("contextual_memory", "qualification_status"):
        writers = {a for a, g in GRANTS.items() if field in g.conversations}
        assert writers == {Actor.AGENT}, field


def test_an_actor_writes_status_exactly_when_it_has_transitions() -> None:
    for actor, grant in GRANTS.items():
        assert ("status" in grant.turns) == bool(grant.transitions), actor


def test_each_stage_is_an_actor_and_owns_the_column_that_marks_its_output() -> None:
    assert set(STAGE_ACTORS) == set(Stage) == set(STAGE_OUTPUT)
    for stage, column in STAGE_OUTPUT.items():
        assert column in GRANTS[STAGE_ACTORS[stage]].turns


def test_the_sql_builders_check_what_they_render() -> None:
    assert columns(Actor.CLIENT, Table.TURNS, ["id", "status"]) == "id, status"
    with pytest.raises(OwnershipViolation):
        columns(Actor.CLIENT, Table.TURNS, ["id", "agent_response"])
    assert (
        assignments(Actor.SWEEPER, Table.TURNS, {"attempts": "attempts + 1"})
        == "attempts = attempts + 1"
    )
    with pytest.raises(IllegalTransition, match="names its target"):
        assignments(Actor.SWEEPER, Table.TURNS, {"status": "'failed'"})
    with pytest.raises(IllegalTransition, match="'sweeper' may not move a turn to completed"):
        assignments(Actor.SWEEPER, Table.TURNS, {"status": "'completed'"}, to=[S.COMPLETED])
    assert sql_in([S.ROUTED, S.QUEUED]) == "status IN ('queued', 'routed')"
    assert sql_in([S.HELD], "t.status") == "t.status = 'held'"


# The SQL guards are the declared transitions


def _stage_sql(stage: Stage, values: dict[str, Any]) -> str:
    return turn_sql._stage_write(stage, tuple(sorted(values)), False, values.get("status"))


def test_the_stage_writes_are_guarded_by_their_transitions() -> None:
    merge = _stage_sql(Stage.MERGE, {"routed_at": 1.0, "status": "routed"})
    assert "WHERE id = %(turn_id)s AND routed_at IS NULL AND status = 'queued'" in merge
    agent = _stage_sql(Stage.AGENT, {"completed_at": 1.0, "status": "completed"})
    assert "WHERE id = %(turn_id)s AND completed_at IS NULL AND status = 'routed'" in agent
    # the header stages set no status: only their own output guards their write
    orchestrator = _stage_sql(Stage.ORCHESTRATOR, {"orchestrated_at": 1.0})
    assert "WHERE id = %(turn_id)s AND orchestrated_at IS NULL\n" in orchestrator
    assert status_guard(Actor.MERGE, S.ROUTED) in merge
    assert status_guard(Actor.AGENT, S.COMPLETED) in agent


@pytest.mark.parametrize(
    ("stage", "values", "error", "message"),
    [
        (Stage.RESEARCHER, {"phase": "opening"}, OwnershipViolation, "'researcher' tried"),
        (Stage.MERGE, {"routed_at": 1.0}, IllegalTransition, "status with its output"),
        (Stage.AGENT, {"status": "failed"}, IllegalTransition, "to failed"),
        (Stage.AGENT, {"status": "paused"}, IllegalTransition, "'paused' is not a turn status"),
        (Stage.ORCHESTRATOR, {"status": "routed"}, OwnershipViolation, "'orchestrator' tried"),
    ],
)
def test_a_stage_write_outside_its_grant_fails_before_any_statement(
    stage: Stage, values: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _stage_sql(stage, values)


def test_the_fixed_statements_carry_the_declared_guards() -> None:
    assert status_guard(Actor.INTERRUPT, S.CANCELLED, column="t.status") in turn_sql._INTERRUPT
    assert "t.status IN ('held', 'queued', 'routed', 'waiting')" in turn_sql._INTERRUPT
    promotable = "t.status = 'held'"
    assert promotable == turn_sql._PROMOTABLE and promotable in turn_sql._PROMOTE_HELD
    release = turn_sql._RELEASE_CONVERSATION
    assert "AND turns.status = 'waiting'" in release  # the hand-over queues a waiting turn
    assert sql_in(AWAITING_CONVERSATION) in release  # and picks one that may be queued
    assert "CASE WHEN %(held)s THEN 'held'" in turn_sql._ACCEPT_TURN
    assert turn_sql._AWAITING_CONVERSATION == ["held", "waiting"]
    assert turn_sql._HANDOVER_QUEUES == ["waiting"]


def table_of(model: type[Base]) -> sqlalchemy.Table:
    table = model.__table__
    assert isinstance(table, sqlalchemy.Table), model
    return table


def test_the_sweeper_watches_the_statuses_it_may_fail_as_its_index_holds_them() -> None:
    assert recovery._STUCK == sorted(sources(Actor.SWEEPER, S.FAILED)) == ["queued", "routed"]
    predicates = {
        str(index.name): str(index.dialect_options["postgresql"]["where"])
        for index in table_of(Turn).indexes
    }
    assert predicates["ix_turns_open_by_deadline"] == sql_in(sources(Actor.SWEEPER, S.FAILED))
    assert predicates["ix_turns_held"] == sql_in(sources(Actor.ADMISSION, S.QUEUED))


_STATUS_LITERAL = re.compile(r"'(held|waiting|queued|routed|completed|failed|cancelled)'")


def test_the_turn_repository_writes_no_status_by_hand() -> None:
    """Every status in shared/db/turns.py's SQL is rendered from the rules."""
    source = (ROOT / "shared" / "db" / "turns.py").read_text()
    assert _STATUS_LITERAL.findall(source) == []


# An SQL statement (as this code base writes them) or an ORM statement that writes either.
_WRITES = re.compile(
    r"\b(UPDATE|INSERT INTO)\s+(turns|conversations)\b|\b(update|insert)\((Turn|Conversation)\)"
)
# The modules of the domain and the workers that write turns or conversations, each through
# shared/turn_state.py. (Of the tools, only the re-scoring bench's synthetic history writes
# turns: finished ones, inserted whole, that never run.)
WRITERS = {"shared/db/turns.py", "shared/turn/recovery.py"}


def test_turns_and_conversations_are_written_only_where_the_rules_are_applied() -> None:
    tools = ROOT / "shared" / "tools"
    writing = {
        str(path.relative_to(ROOT))
        for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
        if not path.is_relative_to(tools) and _WRITES.search(path.read_text())
    }
    assert writing == WRITERS


# The database's constraints hold the same values


def _migration() -> Any:
    path = ROOT / "migrations" / "versions" / "0011_status_and_enum_checks.py"
    spec = importlib.util.spec_from_file_location("migration_0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENUM_COLUMNS = {
    ("turns", "status"): TurnStatus,
    ("turns", "topology"): Topology,
    ("turns", "phase"): Phase,
    ("turns", "proposed_agent"): Agent,
    ("turns", "kb_information_level"): KbLevel,
    ("turns", "next_agent"): Agent,
    ("conversations", "qualification_status"): Qualification,
}


def test_the_migrations_checks_hold_every_value_the_code_writes() -> None:
    """A value added to one of these enums needs a migration that widens its constraint."""
    checks = _migration().CHECKS
    assert set(checks) == set(ENUM_COLUMNS)
    for column, enum in ENUM_COLUMNS.items():
        assert tuple(checks[column]) == tuple(e.value for e in enum), column


def test_the_models_declare_the_same_checks() -> None:
    declared = {
        (model.__tablename__, str(constraint.name))
        for model in (Turn, Conversation)
        for constraint in table_of(model).constraints
        if constraint.__class__.__name__ == "CheckConstraint"
    }
    assert declared == {(table, f"ck_{table}_{column}") for table, column in ENUM_COLUMNS}
