"""Alembic's head, applied to an empty database, matches the models."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import IntegrityError

from shared.db.migrations import alembic_config
from shared.db.models import Base
from shared.db.session import database_url

pytestmark = pytest.mark.integration


def test_upgrade_head_on_an_empty_database_matches_the_models(services: None) -> None:
    name = f"migcheck_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = database_url().rsplit("/", 1)[0] + f"/{name}"
    try:
        command.upgrade(alembic_config(url), "head")
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(
                text("SELECT extversion FROM pg_extension WHERE extname='vector'")
            ).scalar()
            storage = conn.execute(
                text(
                    "SELECT attrelid::regclass::text, attstorage FROM pg_attribute "
                    "WHERE attrelid::regclass::text LIKE 'kb_vectors_%' AND attname = 'embedding'"
                )
            ).all()
            # PLAIN in every vector table: the planner can cost the HNSW index correctly
            assert len(storage) >= 2 and {s for _, s in storage} == {"p"}
            # room on each page for the stages' in-place (HOT) updates
            options: dict[str, list[str]] = dict(
                conn.execute(
                    text(
                        "SELECT relname, reloptions FROM pg_class "
                        "WHERE relname IN ('turns', 'conversations')"
                    )
                ).all()
            )
            assert options == {"turns": ["fillfactor=70"], "conversations": ["fillfactor=70"]}
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        engine.dispose()
        assert diff == []
        command.check(alembic_config(url))  # the same check `alembic check` runs
        command.downgrade(alembic_config(url), "base")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _scratch_database(admin: Engine) -> str:
    name = f"migcheck_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return name


CHECKS = {
    "ck_turns_status",
    "ck_turns_topology",
    "ck_turns_phase",
    "ck_turns_proposed_agent",
    "ck_turns_kb_information_level",
    "ck_turns_next_agent",
    "ck_conversations_qualification_status",
}


def _checks(conn: Connection) -> dict[str, bool]:
    """The CHECK constraints of turns and conversations, and whether each is validated."""
    rows = conn.execute(
        text(
            "SELECT conname, convalidated FROM pg_constraint "
            "WHERE contype = 'c' AND conrelid::regclass::text IN ('turns', 'conversations')"
        )
    ).all()
    return {name: validated for name, validated in rows}


def test_the_status_and_enum_checks_go_onto_populated_tables_and_come_off_again(
    services: None,
) -> None:
    """0011 on tables that already hold turns of every status: each constraint is added and
    validated, later writes outside the lists are refused, and the downgrade drops them."""
    admin = create_engine(database_url(), isolation_level="AUTOCOMMIT")
    name = _scratch_database(admin)
    url = database_url().rsplit("/", 1)[0] + f"/{name}"
    engine = create_engine(url)
    try:
        command.upgrade(alembic_config(url), "0010")
        conversation = uuid.uuid4()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name) VALUES ('t', 't')"))
            conn.execute(
                text(
                    "INSERT INTO conversations (id, tenant_id, external_id, "
                    "qualification_status) VALUES (:c, 't', 'c1', 'evaluating')"
                ),
                {"c": conversation},
            )
            for seq, status in enumerate(
                ("held", "waiting", "queued", "routed", "completed", "failed", "cancelled"), 1
            ):
                conn.execute(
                    text(
                        "INSERT INTO turns (id, tenant_id, conversation_id, seq, message, "
                        "topology, status, accepted_at, phase, proposed_agent, "
                        "kb_information_level, next_agent) VALUES (gen_random_uuid(), 't', :c, "
                        ":seq, 'hi', 'parallel', :status, 0, 'discovery', 'discovery', "
                        "'PARTIAL', 'support')"
                    ),
                    {"c": conversation, "seq": seq, "status": status},
                )
        command.upgrade(alembic_config(url), "head")
        with engine.connect() as conn:
            assert _checks(conn) == dict.fromkeys(CHECKS, True)
        with engine.connect() as conn, pytest.raises(IntegrityError, match="ck_turns_status"):
            conn.execute(text("UPDATE turns SET status = 'paused' WHERE seq = 1"))
        command.downgrade(alembic_config(url), "0010")
        with engine.begin() as conn:
            assert _checks(conn) == {}
            conn.execute(text("UPDATE turns SET status = 'paused' WHERE seq = 1"))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
