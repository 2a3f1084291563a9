"""Alembic's head, applied to an empty database, matches the models."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

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
            options = dict(
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
